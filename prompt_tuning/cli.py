"""What the gin-configured commands (pt-train, pt-eval, pt-infer,
pt-export-peft) share: their flags, gin parsing, multi-host start-up, and
turning any bad input into one clear error line (exit status 1) instead of a
traceback. The absl runner itself (quiet start, flag errors) is `command`.
"""
import sys

from absl import flags
from absl import logging

from prompt_tuning import command
from prompt_tuning.command import first_line

flags.DEFINE_multi_string("gin_file", [], "Gin files, in order; later files override earlier.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings; --gin.NAME=value is the short form.")
flags.DEFINE_list("gin_search_paths", [], "Extra folders to look up gin files in (before the "
                  "package's own gin/ folder).")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data dir (overrides every task's).")
flags.DEFINE_list("seqio_additional_cache_dirs", [], "Folders to search for cached seqio "
                  "tasks in addition to the defaults (T5X's flag).")
flags.DEFINE_bool("distributed", False, "Multi-host run: call jax.distributed.initialize() "
                  "(no arguments needed on Cloud TPU; elsewhere give the three flags below).")
flags.DEFINE_string("coordinator_address", None, "jax.distributed coordinator host:port "
                    "(process 0's address), with --num_processes and --process_id.")
flags.DEFINE_integer("num_processes", None, "jax.distributed process count.")
flags.DEFINE_integer("process_id", None, "jax.distributed process id (0 .. num_processes-1).")
# T5X's names of the same flags.
flags.DEFINE_alias("multiprocess_gpu", "distributed")
flags.DEFINE_alias("process_count", "num_processes")
flags.DEFINE_alias("process_index", "process_id")

FLAGS = flags.FLAGS


def user_errors():
  """Exception types that mean bad input (printed as one line, no traceback)."""
  # pylint: disable=g-import-not-at-top
  from prompt_tuning.storage import t5x_checkpoints
  from prompt_tuning import data
  from prompt_tuning.evaluation import seqio_eval
  from prompt_tuning.storage import file_utils
  from prompt_tuning import gin_utils
  from prompt_tuning.methods import initializers
  from prompt_tuning import methods
  from prompt_tuning.storage import run_lock
  from prompt_tuning.training import trainer
  # pylint: enable=g-import-not-at-top
  return (t5x_checkpoints.CheckpointError, data.DataError, seqio_eval.EvalError,
          file_utils.DiskFullError, file_utils.StorageError, gin_utils.ConfigError,
          initializers.PromptInitError, methods.MethodError, trainer.TrainError,
          run_lock.LockError)


# ------------------------------------------------------------- gin commands


def setup(first_gin_files=()):
  """Initialises distribution and data flags and parses gin (after absl flags);
  `first_gin_files` are parsed before the user's (which override them)."""
  import seqio  # pylint: disable=g-import-not-at-top
  from prompt_tuning import configurables  # pylint: disable=g-import-not-at-top,unused-import
  from prompt_tuning import gin_utils  # pylint: disable=g-import-not-at-top
  if FLAGS.distributed:
    initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif FLAGS.coordinator_address or FLAGS.num_processes or FLAGS.process_id is not None:
    raise gin_utils.ConfigError("--coordinator_address, --num_processes and --process_id need "
                                "--distributed")
  if FLAGS.tfds_data_dir:
    seqio.set_tfds_data_dir_override(FLAGS.tfds_data_dir)
  if FLAGS.seqio_additional_cache_dirs:
    seqio.add_global_cache_dirs(FLAGS.seqio_additional_cache_dirs)
  gin_utils.parse(list(first_gin_files) + list(FLAGS.gin_file), FLAGS.gin_bindings,
                  FLAGS.gin_search_paths)


def initialize_distributed(coordinator_address, num_processes, process_id):
  """jax.distributed.initialize: with no arguments on Cloud TPU (and other
  clusters JAX detects), or with all three for an explicit setup such as
  several CPU processes on one machine."""
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning import gin_utils  # pylint: disable=g-import-not-at-top
  given = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in given) and any(v is None for v in given):
    raise gin_utils.ConfigError("--coordinator_address, --num_processes and --process_id go "
                                "together: give all three, or none on Cloud TPU")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise gin_utils.ConfigError(f"--process_id must be in 0..{num_processes - 1}, got {process_id}")
  # CPU processes talk through gloo (the default in recent JAX, set for older ones).
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError):
    pass
  try:
    if coordinator_address is None:
      jax.distributed.initialize()
    else:
      jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except (RuntimeError, ValueError) as e:
    raise gin_utils.ConfigError(f"jax.distributed.initialize failed: {first_line(e)}") from None


def os_error_message(e: OSError) -> str:
  """One line for an OSError that no check caught (a full disk, a permission):
  its own words, which name the file."""
  import errno  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  text = first_line(e)
  code = e.errno  # None on gin's proxy of an error raised in a configurable: read the text
  if code is None:
    match = re.match(r"\[Errno (\d+)\]", text)
    code = int(match.group(1)) if match else None
  if code in (errno.ENOSPC, errno.EDQUOT):
    return f"disk full: {text}"
  return text


def _disk_full_message(e):
  """One line for a full disk reported by a library's own error type (TensorFlow
  raises ResourceExhaustedError, not OSError), or None."""
  text = str(e)
  if "No space left on device" in text or "Disk quota exceeded" in text:
    return f"disk full: {first_line(e)}"
  return None


def required_binding_message(e):
  """Turns gin's 'Required bindings ... not provided' into the macro to set."""
  text = str(e)
  if "Required bindings" in text or "gin.REQUIRED" in text or "REQUIRED" in text:
    import re  # pylint: disable=g-import-not-at-top
    names = re.findall(r"'(\w+)'", text.split("\n")[0])
    macros = [n.upper() for n in names if n.upper() != n] or names
    return ("required setting missing: " + ", ".join(macros) +
            " (pass e.g. --gin." + (macros[0] if macros else "NAME") + "=... )")
  return None


# A run stopped by SIGTERM after checkpointing exits as a SIGTERM'd process would.
PREEMPTED_EXIT = 128 + 15


def run(main_fn, prog, first_gin_files=(), extra_errors=()):
  """Runs a gin-configured command's `main_fn()` under absl, mapping bad
  input (`user_errors()` and `extra_errors`) to `prog: error: ...`;
  `first_gin_files` as in `setup`."""
  from prompt_tuning import gin_utils  # pylint: disable=g-import-not-at-top
  from prompt_tuning.training import preemption  # pylint: disable=g-import-not-at-top

  def main():
    try:
      command.load_tensorflow()
      setup(first_gin_files)
      main_fn()
    except preemption.Preempted as e:  # its first line: gin appends "In call to ..."
      sys.stderr.write(f"{prog}: {first_line(e)}\n")
      sys.exit(PREEMPTED_EXIT)
    except user_errors() + tuple(extra_errors) as e:
      logging.debug("error", exc_info=True)
      command.fail(prog, first_line(e))
    except OSError as e:  # the machine's, not the program's: a full disk, a permission
      logging.debug("error", exc_info=True)
      command.fail(prog, os_error_message(e))
    except (ValueError, RuntimeError, TypeError) as e:
      message = required_binding_message(e) or _disk_full_message(e)
      if message is None:
        raise
      command.fail(prog, message)
    except Exception as e:  # pylint: disable=broad-except
      # TensorFlow's own file errors (seqio's loggers, TensorBoard write through it).
      message = _disk_full_message(e)
      if message is None:
        raise
      command.fail(prog, message)

  def rewrite(argv):
    try:
      return gin_utils.rewrite_gin_args(argv)
    except gin_utils.ConfigError as e:
      command.fail(prog, str(e))

  command.run(prog, main, rewrite=rewrite)
