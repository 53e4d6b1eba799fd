"""Shared helpers for the end-to-end tests: a tiny model config, a random
frozen T5X checkpoint, in-process gin runs and CLI subprocesses."""
import hashlib
import os
import pathlib
import subprocess
import sys

import gin
import jax

TESTS = pathlib.Path(__file__).resolve().parent

# Tiny T5 1.1 on the byte-level demo task (see tasks/demo.py).
TINY_FILES = ["models/t5_1_1_small_prompt.gin", "models/sizes/tiny.gin"]
RUN_BINDINGS = [
    "MIXTURE_OR_TASK_NAME = 'demo_last_word'",
    "MIXTURE_OR_TASK_MODULE = 'prompt_tuning.tasks.demo'",
    "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 8}",
    "BATCH_SIZE = 8",
]
MODEL_BINDINGS = [
    "NUM_EMBEDDINGS = 384",
    "ACTIVATION_DTYPE = 'float32'",
    "PROMPT_LENGTH = 6",
    "EMBED_DIM = 32",
    "NUM_HEADS = 2",
    "HEAD_DIM = 8",
    "MLP_DIM = 64",
]
TINY_BINDINGS = RUN_BINDINGS + MODEL_BINDINGS

# T5 1.1 with the shapes of the real tiny T5X checkpoint in ../shared/data
# (t5x_tiny, T5's vocabulary): its gin file, then bindings and flags.
TINY_CKPT_FILE = "models/t5_1_1_small_prompt.gin"
TINY_CKPT_BINDINGS = [
    "EMBED_DIM = 4", "NUM_HEADS = 2", "HEAD_DIM = 2", "MLP_DIM = 8", "NUM_ENCODER_LAYERS = 2",
    "NUM_DECODER_LAYERS = 2", "RELATIVE_ATTENTION_NUM_BUCKETS = 4",
    "RELATIVE_ATTENTION_MAX_DISTANCE = 8", "ACTIVATION_DTYPE = 'float32'",
]


def as_flags(bindings):
  out = []
  for b in bindings:
    name, value = b.split("=", 1)
    out.append(f"--gin.{name.strip()}={value.strip()}")
  return out


def tiny_ckpt_flags(*bindings, files=()):
  """pt-train / pt-eval flags: the tiny checkpoint's model, the gin `files`
  after it, then `bindings`."""
  return ([f"--gin_file={f}" for f in (TINY_CKPT_FILE, *files)]
          + as_flags(TINY_CKPT_BINDINGS + list(bindings)))


def build_model(bindings=()):
  """The gin-configured tiny MODEL."""
  from prompt_tuning import configurables  # pylint: disable=g-import-not-at-top
  return configurables.build_model(TINY_FILES, MODEL_BINDINGS + list(bindings))


def write_random_checkpoint(directory, seed=0):
  """A random tiny frozen model written as a T5X checkpoint; returns its path."""
  from prompt_tuning.storage import t5x_checkpoints  # pylint: disable=g-import-not-at-top
  from prompt_tuning.model import weights  # pylint: disable=g-import-not-at-top
  from prompt_tuning.storage import trees  # pylint: disable=g-import-not-at-top
  model = build_model()
  params = weights.init_random(model, jax.random.PRNGKey(seed),
                                    weights.dummy_batch(1, 8, 4))
  frozen = trees.split(params, ["encoder/prompt/.*"])[1]
  return t5x_checkpoints.save_checkpoint(str(directory), jax.device_get(frozen), 0)


def train_in_process(model_dir, bindings=(), files=("runs/prompt_finetune.gin",)):
  from prompt_tuning import configurables  # pylint: disable=g-import-not-at-top,unused-import
  from prompt_tuning import gin_utils  # pylint: disable=g-import-not-at-top,unused-import
  from prompt_tuning.training import trainer  # pylint: disable=g-import-not-at-top,unused-import
  gin.clear_config()
  gin_utils.parse(TINY_FILES + list(files),
                  TINY_BINDINGS + [f"MODEL_DIR = '{model_dir}'"] + list(bindings))
  try:
    return trainer.train()
  finally:
    gin.clear_config()


def _with_devices(flags, devices):
  """`flags` (a list) with `devices` host devices instead of any earlier count."""
  return [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")] + [
      f"--xla_force_host_platform_device_count={devices}"]


def xla_flags(devices):
  """XLA_FLAGS for a subprocess with `devices` host devices: this process's
  flags otherwise (a caller's XLA_FLAGS reach every run)."""
  return " ".join(_with_devices(os.environ.get("XLA_FLAGS", "").split(), devices))


def run_cli(prog, args, timeout=300, as_user=False):
  """The command in a subprocess: (returncode, stdout, stderr). as_user: with
  no TF_CPP_MIN_LOG_LEVEL of the user's (what a user's shell has), so the
  whole stderr is the command's own."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("PT_VOCABULARY_PATH", "SUPERGLUE_DATA_DIR", "TF_CPP_MIN_LOG_LEVEL")}
  env.update(JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
  if not as_user:
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  module = {"pt-train": "prompt_tuning.train", "pt-eval": "prompt_tuning.eval",
            "pt-infer": "prompt_tuning.infer"}[prog]
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        env=env, timeout=timeout, check=False)


def run_cli_in_process(prog, args, stdout=None):
  """pt-train / pt-eval / pt-infer run as `cli.run` runs them, in this process
  (no interpreter start-up, jitted code and datasets shared): (exit status,
  stderr text). `stdout`: a StringIO that gets what the command prints.

  An exception that escapes cli.run, which a user would see as a traceback,
  comes back as exit status 1 with the traceback in the stderr text.
  """
  import contextlib  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  import traceback  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
  from prompt_tuning import eval as pt_eval  # pylint: disable=g-import-not-at-top
  from prompt_tuning import infer as pt_infer  # pylint: disable=g-import-not-at-top
  from prompt_tuning import train as pt_train  # pylint: disable=g-import-not-at-top
  if prog == "pt-infer":
    pt_infer._define_flags()  # pylint: disable=protected-access
  main = {"pt-train": pt_train.main, "pt-eval": pt_eval.main, "pt-infer": pt_infer.main}[prog]
  saved_env = {k: os.environ.pop(k) for k in ("PT_VOCABULARY_PATH", "SUPERGLUE_DATA_DIR")
               if k in os.environ}
  saved_argv, err = sys.argv, io.StringIO()
  flags.FLAGS.unparse_flags()
  gin.clear_config()
  sys.argv = [prog, *map(str, args)]
  try:
    with contextlib.redirect_stderr(err), (contextlib.redirect_stdout(stdout) if stdout is not None
                                           else contextlib.nullcontext()):
      try:
        cli.run(main, prog)
        status = 0
      except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      except Exception:  # pylint: disable=broad-except
        traceback.print_exc()
        status = 1
  finally:
    sys.argv = saved_argv
    os.environ.update(saved_env)
    gin.clear_config()
    flags.FLAGS.unparse_flags()
  return status, err.getvalue()


def run_cli_here(prog, args):
  """What `run_cli` returns (returncode, stdout, stderr), from a run in this
  process (`run_cli_in_process`): for tests of what a command does, not of
  the interpreter around it."""
  import io  # pylint: disable=g-import-not-at-top
  out = io.StringIO()
  status, err = run_cli_in_process(prog, args, stdout=out)
  return subprocess.CompletedProcess([prog, *map(str, args)], status, out.getvalue(), err)


def snapshot(directory):
  """{relative path: sha256} of every file under a directory."""
  out = {}
  for path in sorted(pathlib.Path(directory).rglob("*")):
    if path.is_file():
      out[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
  return out


# ------------------------------------------- a tiny T5 built in Python (no gin)


def tiny_config(**changes):
  """A 2 + 2 layer T5 1.1 of width 32 over a 64-token vocabulary, for tests of
  the model's numerics (remat, bf16 products, decoding); `changes` replace
  fields (dtype, dropout_rate, remat_policy, ...)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from prompt_tuning.model import t5  # pylint: disable=g-import-not-at-top
  config = t5.T5Config(vocab_size=64, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=48,
                       num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0,
                       dtype="float32", relative_attention_num_buckets=8,
                       relative_attention_max_distance=16)
  return dataclasses.replace(config, **changes)


def loss_batch(batch=4, inputs=9, targets=5, vocab=64):
  """A fixed random training batch with one padded input row and one padded
  target row."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  target_tokens = rng.integers(2, vocab, (batch, targets)).astype(np.int32)
  target_tokens[1, 3:] = 0
  input_tokens = rng.integers(2, vocab, (batch, inputs)).astype(np.int32)
  input_tokens[2, 6:] = 0
  return {"encoder_input_tokens": jnp.asarray(input_tokens),
          "decoder_input_tokens": jnp.asarray(np.pad(target_tokens, ((0, 0), (1, 0)))[:, :-1]),
          "decoder_target_tokens": jnp.asarray(target_tokens),
          "decoder_loss_weights": jnp.asarray(target_tokens > 0, jnp.float32)}


def perturbed_params(model, inputs=9, targets=5, scale=0.1, seed=0, noise_seed=1):
  """Random parameters (float32) with every one perturbed by `scale` normal
  noise, so that zero-initialised ones (LoRA B, adapter `up`) matter too."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from prompt_tuning.model import weights  # pylint: disable=g-import-not-at-top
  from prompt_tuning.storage import trees  # pylint: disable=g-import-not-at-top
  params = weights.init_random(model, jax.random.PRNGKey(seed),
                                    weights.dummy_batch(1, inputs, targets))
  rng = np.random.default_rng(noise_seed)
  flat = {k: jnp.asarray(np.asarray(v) + scale * rng.standard_normal(v.shape).astype(np.float32))
          for k, v in trees.flatten(params).items()}
  return trees.unflatten(flat)


def loss_and_grads(model, params, batch=None, dropout_rng=None):
  """(loss, gradients of the trainable parameters) of one jitted step on
  `batch` (default `loss_batch()`)."""
  from prompt_tuning import methods  # pylint: disable=g-import-not-at-top
  from prompt_tuning.storage import trees  # pylint: disable=g-import-not-at-top
  batch = loss_batch() if batch is None else batch
  trainable, frozen = trees.split(params, methods.TRAINABLE_PARAMS)

  def loss(trainable):
    return model.loss_fn(trees.merge(trainable, frozen), batch,
                         dropout_rng=dropout_rng)[0]
  return jax.device_get(jax.jit(jax.value_and_grad(loss))(trainable))
