"""Benchmarks real `pt-train` steps on a registered task: padding 'fixed' vs 'buckets'.

  python bench/task_step.py                       # FewGLUE RTE, 512/8, T5 1.1 Small, P=100
  python bench/task_step.py --padding fixed --padding buckets --padding buckets+group

What is timed: the training loop of `pt-train` for each padding setting, on
the real input pipeline (`data.get_dataset`: the task's reading, tokenisation
and feature conversion, shuffled with seed 0, batched, optionally grouped by
length; then `data.fit_batch`), the jitted `training.step.make_train_step` (with
`donate_argnums=(0, 1)`, as pt-train), a frozen random-weight T5 1.1 of
`--size` (bench/train_step.py's configs, dropout 0.1), a prompt of `--prompt`
tokens, `optimizers.adafactor()` with the paper's settings. Each step is
timed from fetching its batch to `block_until_ready`; a step whose shapes are
new compiles, and is not counted in the steady state:

  examples_per_s       batch * steady steps / their summed time
  compiles             distinct (encoder, decoder) shapes seen (one compilation each)
  padded_fraction      share of input and target token positions that are
                       padding, over every batch fed to the model (after fit_batch)
  encoder_length_mean  mean encoder length (prompt + inputs) of the steady steps
  model_flops_per_s    bench/train_step.count_flops of each steady step's shapes,
                       summed, over their time; fraction_of_matmul_peak: the mean over
                       steady steps of each step's model FLOP/s over its round's peak

`--padding` (repeatable; default all three): `fixed` (every batch at
TASK_FEATURE_LENGTHS, T5X), `buckets` (the default of pt-train), and
`buckets+group` (GROUP_BY_LENGTH = `--group`, 4 batches by default). One JSON
line per setting, then one with the ratios to `fixed`.

The task defaults to FewGLUE's 32 RTE examples from ../shared/data
(`--superglue-data-dir`, `--vocabulary`): `super_glue_rte_v102`.
"""
import argparse
import importlib.util
import json
import pathlib
import statistics
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import data
from prompt_tuning import methods
from prompt_tuning.model import weights
from prompt_tuning.training import optimizers
from prompt_tuning.training import step as train_step

HERE = pathlib.Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
PADDINGS = ("fixed", "buckets", "buckets+group")


def _train_step_module():
  spec = importlib.util.spec_from_file_location("bench_train_step", HERE / "train_step.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--task", default="super_glue_rte_v102")
  parser.add_argument("--module", default="prompt_tuning.tasks.super_glue",
                      help="module that registers --task")
  parser.add_argument("--superglue-data-dir", default=str(SHARED / "fewglue"))
  parser.add_argument("--vocabulary", default=str(SHARED / "t5_vocab" / "spiece.model"),
                      help="SentencePiece model (T5's, 100 extra ids); '' for the default")
  parser.add_argument("--size", default="small")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=8)
  parser.add_argument("--prompt", type=int, default=100)
  parser.add_argument("--steps", type=int, default=12, help="steps run per setting")
  parser.add_argument("--padding", action="append", choices=PADDINGS, default=None)
  parser.add_argument("--group", type=int, default=4, help="GROUP_BY_LENGTH of buckets+group")
  parser.add_argument("--buckets", type=int, nargs="*", default=None,
                      help="PADDING_BUCKETS (default: data.DEFAULT_BUCKETS)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16",
                      help="activation dtype (ACTIVATION_DTYPE; bfloat16 is T5 1.1's and "
                      "pt-train's)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--peak-size", type=int, default=2048)
  args = parser.parse_args(argv)
  for name in ("batch", "inputs", "targets", "prompt", "steps", "group", "peak_size"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be >= 1")
  args.padding = args.padding or list(PADDINGS)
  return args


def _vocabulary(path):
  if not path:
    return None
  import seqio  # pylint: disable=g-import-not-at-top
  return seqio.SentencePieceVocabulary(path, extra_ids=100)


class Setting:
  """One padding setting's training state, stepped by `step`."""

  def __init__(self, args, model, frozen, name):
    self.name = name
    self.padding = data.Padding(mode="fixed" if name == "fixed" else "buckets",
                                buckets=args.buckets,
                                group_by_length=args.group if name == "buckets+group" else None)
    lengths = {"inputs": args.inputs, "targets": args.targets}
    ds = data.get_dataset(args.task, lengths, "train", args.batch, shuffle=True,
                          seed=args.seed, padding=self.padding)
    shapes_batch = weights.dummy_batch(1, args.inputs, args.targets)
    self.trainable = weights.init_trainable(model, jax.random.PRNGKey(args.seed),
                                                 shapes_batch, methods.TRAINABLE_PARAMS)
    optimizer = optimizers.adafactor()
    self.opt_state = optimizer.init(self.trainable)
    self.step_fn = jax.jit(train_step.make_train_step(model, optimizer),
                           donate_argnums=(0, 1))
    self.frozen, self.rng = frozen, jax.random.PRNGKey(args.seed)
    self.iterator = ds.as_numpy_iterator()
    self.seen, self.steady, self.compile_s = set(), [], 0.0
    self.real = self.total = 0
    self.loss, self.step_count = None, 0

  def step(self, peak):
    """One training step: fetch, fit, run, wait; recorded as compile or steady."""
    start = time.perf_counter()
    batch = data.fit_batch(next(self.iterator), self.padding)
    shape = (batch["encoder_input_tokens"].shape[1], batch["decoder_target_tokens"].shape[1])
    self.trainable, self.opt_state, metrics = self.step_fn(
        self.trainable, self.opt_state, self.frozen, batch, jnp.int32(self.step_count), self.rng)
    jax.block_until_ready((self.trainable, self.opt_state, metrics))
    seconds = time.perf_counter() - start
    self.step_count += 1
    self.loss = float(metrics["loss"])
    for name in ("encoder_input_tokens", "decoder_target_tokens"):
      self.real += int(np.count_nonzero(batch[name]))
      self.total += batch[name].size
    if shape in self.seen:
      self.steady.append((seconds, shape, peak))
    else:
      self.seen.add(shape)
      self.compile_s += seconds

  def row(self, args, bench, config):
    row = {"task": args.task, "padding": self.name, "size": args.size, "batch": args.batch,
           "inputs": args.inputs, "targets": args.targets, "prompt": args.prompt,
           "dtype": config.dtype, "backend": jax.default_backend(),
           "group_by_length": self.padding.group_by_length, "steps": self.step_count,
           "steady_steps": len(self.steady), "compiles": len(self.seen),
           "shapes": [list(s) for s in sorted(self.seen)], "compile_steps_s": self.compile_s,
           "padded_fraction": 1.0 - self.real / max(self.total, 1), "loss": self.loss}
    if not self.steady:
      row.update(step_s=None, step_s_median=None, examples_per_s=None, encoder_length_mean=None,
                 model_flops_per_s=None, matmul_peak_flops_per_s=None,
                 fraction_of_matmul_peak=None)
      return row
    seconds = sum(s for s, _, _ in self.steady)
    flops = [bench.count_flops(config, args.batch, args.prompt + e, d)
             for _, (e, d), _ in self.steady]
    # Each step against the matmul peak measured just before it (the load varies).
    fractions = [f / s / p for f, (s, _, p) in zip(flops, self.steady)]
    row.update(
        step_s=seconds / len(self.steady),
        step_s_median=statistics.median(s for s, _, _ in self.steady),
        examples_per_s=args.batch * len(self.steady) / seconds,
        encoder_length_mean=float(np.mean([args.prompt + e for _, (e, _d), _ in self.steady])),
        model_flops_per_s=sum(flops) / seconds,
        matmul_peak_flops_per_s=float(np.mean([p for _, _, p in self.steady])),
        fraction_of_matmul_peak=float(np.mean(fractions)))
    return row


def main(argv=None):
  """Runs every --padding setting; prints and returns the JSON rows."""
  args = parse_args(argv)
  warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
  bench = _train_step_module()
  data.configure_sources(_vocabulary(args.vocabulary), args.superglue_data_dir)
  data.import_task_modules(args.module)
  data.get_task(args.task)
  config = bench.make_config(args.size, args.dtype)
  model, frozen = bench.prompt_model(config, args.prompt, args.inputs, args.targets, args.seed)
  settings = [Setting(args, model, frozen, name) for name in args.padding]
  # Round robin, one step of each setting per round, so that all of them see the
  # same machine load (a shared machine's load varies by minutes); the matmul
  # peak is measured again before each round.
  for _ in range(args.steps):
    peak = bench.matmul_peak(args.peak_size, repeats=2, dtype=args.dtype)
    for setting in settings:
      setting.step(peak)
  rows = []
  for setting in settings:
    row = setting.row(args, bench, config)
    print(json.dumps(row), flush=True)
    rows.append(row)
  fixed = next((r for r in rows if r["padding"] == "fixed" and r["examples_per_s"]), None)
  if fixed and len(rows) > 1:
    summary = {"task": args.task, "speedup_over_fixed": {
        r["padding"]: r["examples_per_s"] / fixed["examples_per_s"]
        for r in rows if r["examples_per_s"]}}
    print(json.dumps(summary), flush=True)
    rows.append(summary)
  return rows


if __name__ == "__main__":
  main()
