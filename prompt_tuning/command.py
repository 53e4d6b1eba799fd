"""What every command shares: absl flags parsed into one clear error line, a
quiet start, and the exit status.

Every command (pt-train, pt-eval, pt-infer, pt-sweep, pt-sweep report,
pt-neighbors, pt-import-peft, pt-export-peft, `python -m prompt_tuning.demo`)
parses its flags with absl through `run`: a bad flag or a stray argument is
one `prog: error: ...` line and exit status 1, like every other bad input.
Logs are quiet by default: absl and Python logging at WARNING, and the C++
start-up lines TensorFlow and XLA write while they load (oneDNN, CUDA
probes) are not shown; `--verbosity=0` (INFO) or higher brings all of them
back, `--logtostderr` as absl has it.

This module defines no flag: each command defines its own.
"""
import contextlib
import os
import re
import sys
from typing import Optional

from absl import app
from absl import flags
from absl import logging

from prompt_tuning import quiet

FLAGS = flags.FLAGS
# The user's own TensorFlow C++ log level, read before JAX's import sets it
# to 1 (warnings) for every process that imports it.
_USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")


def first_line(e) -> str:
  """The first line of an exception's message (its type's name when empty)."""
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def fail(prog: str, message, status: int = 1):
  """Prints `prog: error: message` (its first line) and exits."""
  sys.stderr.write(f"{prog}: error: {first_line(message)}\n")
  sys.stderr.flush()
  sys.exit(status)


def verbose() -> bool:
  """Whether the user asked for logs (--verbosity given): then nothing is hidden."""
  return FLAGS.is_parsed() and FLAGS["verbosity"].present


def load_tensorflow():
  """Imports TensorFlow (tf.data runs seqio's pipelines) with its C++
  start-up lines hidden unless the user asked for logs, and keeps it off any
  GPU (the accelerators are JAX's). Python errors still surface."""
  if _USER_TF_LOG_LEVEL is None and not verbose():  # errors only, unless asked for
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
  with contextlib.nullcontext() if verbose() else quiet.muted_stderr():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
  return tf


# seqio's warnings that do not apply to runs of this tool, hidden unless
# --verbosity is given: it advises caching a FunctionDataSource because a
# restart would reshuffle it, but pt-train restores the exact data position on
# a restart (training/data_state.py); it warns that TASK_FEATURE_LENGTHS are
# longer than the evaluation data needs, but each batch is cut to the length
# bucket its examples need (PADDING = 'buckets', data/padding.py).
_NOT_FOR_US = ("Using an uncached FunctionDataset for training is not recommended",
               "Given sequence lengths are longer than necessary")


class _HideWarnings:  # a logging filter (an object with `filter`)

  def filter(self, record) -> bool:
    return not any(text in record.getMessage() for text in _NOT_FOR_US)


def _hide_warnings_not_for_us():
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _HideWarnings) for f in handler.filters):
    handler.addFilter(_HideWarnings())


def parse_flags(prog: str, rewrite=None):
  """absl's flags parser for `app.run`: a bad flag is one `prog: error:`
  line; logs stay at WARNING unless --verbosity is given. `rewrite(argv)`
  may rewrite the arguments first (--gin.X=... shorthands) and raise
  ValueError with the message to print."""
  def parse(argv):
    try:
      argv = rewrite(argv) if rewrite else argv
      rest = FLAGS(argv)
    except flags.UnrecognizedFlagError as e:
      fail(prog, f"unrecognized arguments: --{e.flagname} (see {prog} --helpshort)")
    except (flags.Error, ValueError) as e:
      fail(prog, f"{first_line(e)} (see {prog} --helpshort)")
    if not FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
      _hide_warnings_not_for_us()
    return rest
  return parse


def run(prog: str, main_fn, *, argv=None, rewrite=None, positional: Optional[int] = 0,
        usage: str = ""):
  """Runs `main_fn(*positional arguments)` under absl's app.run and exits
  with the status it returns: flags parsed by `parse_flags` from `argv`
  (sys.argv's when None), exactly `positional` arguments after them (else one
  error line showing `usage`; None: any number, `main_fn` checks them)."""
  def main(argv):
    args = argv[1:]
    if positional is not None and len(args) != positional:
      names = [t for t in usage.split() if re.fullmatch(r"[A-Z][A-Z0-9_]*", t)]
      got = (f"unexpected arguments: {' '.join(args)}" if len(args) > positional else
             "the following arguments are required: "
             + (" ".join(names[len(args):]) or f"{positional - len(args)} more"))
      fail(prog, f"{got}: usage: {prog} {usage}" if usage else
           f"{got} (see {prog} --helpshort)")
    return main_fn(*args)
  app.run(main, argv=list(sys.argv if argv is None else argv),
          flags_parser=parse_flags(prog, rewrite))


def call(prog: str, main_fn, args, **kwargs) -> int:
  """`run` for a caller in the same process (tests, scripts): `args` are the
  command's arguments (without its name); returns the exit status."""
  FLAGS.unparse_flags()
  try:
    run(prog, main_fn, argv=[prog, *map(str, args)], **kwargs)
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  finally:
    FLAGS.unparse_flags()
  return 0
