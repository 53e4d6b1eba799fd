"""One command for an accelerator: pt-train's train step and cached decoding
on T5 1.1 sizes, timed, with MFU and memory, in a few minutes.

  python bench/accelerator.py                    # on a GPU: the default rows
  python bench/accelerator.py --size tiny        # on a CPU (CI runs this)
  python bench/accelerator.py --plan --size xxl  # the memory plan only: runs nothing

It imports no TensorFlow, seqio or metric writer (the device machines have
none): the step is `prompt_tuning.training.step.make_train_step`, the very
function pt-train jits (with donate_argnums=(0, 1)), on frozen random weights
of the published T5 1.1 sizes (float32, as T5X stores them), activations in
ACTIVATION_DTYPE (bfloat16 by default), the prompt (P=100 by default) the
only trainable parameters, Adafactor with the paper's settings, one random
batch of 32 x 512 inputs x 8 targets reused each step. gin-config is needed
(the model's modules are gin-configurable): a pure-Python wheel that travels.

Rows (the defaults, largest last so the process's peak memory is each row's):
  * `train`: Base under every REMAT_POLICY (none, layer, matmuls), then XXL
    under `layer` and `matmuls` (none does not fit in 80 GB: see --plan);
    step time, examples/s, model FLOP/s (bench/train_step.py's analytic
    count), MFU against the matmul peak measured in this run and against the
    datasheet's dense bf16 peak, XLA's memory of the compiled step and the
    device's peak bytes in use; `--largest_batch` also finds, for XXL, the
    largest power-of-two batch that runs on the one device.
  * `methods`: Base with LoRA and with MAM, and SMoP 4x5 next to P=100.
  * `decode`: cached greedy decoding, tokens/s at batch 32, 64 target tokens.
  * `numerics`: one batch's loss with bfloat16 activations vs float32.
One Markdown table at the end, one JSON line per row as it finishes.

`--plan` prints the analytic memory plan of a size (frozen weights; the
activations kept for the backward pass under each remat policy; the trainable
part's gradients and Adafactor state; the logits) and whether it fits in
`--device_gb`; the measured rows print the plan's total beside XLA's figure.
The activation counts are estimates from the layer shapes (what each policy
keeps: every intermediate; only the layers' inputs plus one layer's
intermediates during its recomputation; the outputs of the matmuls without
batch dimensions), not XLA's buffer assignment.
"""
import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from prompt_tuning import tables
from prompt_tuning.model import encoder_decoder
from prompt_tuning.model import layers
from prompt_tuning.model import t5
from prompt_tuning.model import weights
from prompt_tuning.storage import trees

# bench/train_step.py's model sizes, FLOP count, batches and timed step.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step as tsb  # pylint: disable=g-import-not-at-top,wrong-import-position

GB = 1e9
# Dense bfloat16 tensor-core peaks from the vendors' datasheets (FLOP/s), by
# device_kind prefix; None for devices not listed (CPUs).
DATASHEET_BF16 = {"NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
                  "NVIDIA B200": 2250e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
                  "TPU v5p": 459e12}
POLICIES = ("none", "layer", "matmuls")


# ---------------------------------------------------------------- the plan


def param_count(config) -> int:
  """Frozen parameters of a T5 1.1 config (untied logits, gated MLP)."""
  d, f, V = config.emb_dim, config.mlp_dim, config.vocab_size
  n = config.num_heads * config.head_dim
  g = len(config.mlp_activations)
  mlp = g * d * f + f * d
  encoder = config.num_encoder_layers * (4 * d * n + mlp + 2 * d) + d
  decoder = config.num_decoder_layers * (8 * d * n + mlp + 3 * d) + d
  relpos = 2 * config.relative_attention_num_buckets * config.num_heads
  logits = 0 if config.logits_via_embedding else V * d
  return V * d + encoder + decoder + relpos + logits


def activation_bytes(config, batch, enc_len, dec_len, policy, act_bytes) -> int:
  """Bytes the train step keeps for its backward pass under `policy` (an estimate)."""
  b, L, T, a = batch, enc_len, dec_len, act_bytes
  d, f, h = config.emb_dim, config.mlp_dim, config.num_heads
  n = h * config.head_dim
  g = len(config.mlp_activations)
  ne, nd = b * L, b * T
  softmax = 4 + a + 1  # float32 logits, probabilities, dropout mask (one byte)
  enc_full = ne * a * (4 * d + 4 * n + (g + 1) * f) + b * h * L * L * softmax
  dec_full = (nd * a * (6 * d + 6 * n + (g + 1) * f) + ne * a * 2 * n
              + b * h * T * T * softmax + b * h * T * L * softmax)
  if policy == "none":
    per = [enc_full] * config.num_encoder_layers + [dec_full] * config.num_decoder_layers
    return int(sum(per))
  if policy == "layer":  # the layers' inputs, plus one layer rebuilt at a time
    kept = (config.num_encoder_layers * ne + config.num_decoder_layers * nd) * d * a
    return int(kept + max(enc_full, dec_full))
  # matmuls: the outputs of the dots without batch dimensions (projections, MLP)
  enc = ne * a * (4 * n + g * f + d)
  dec = nd * a * (6 * n + g * f + d) + ne * a * 2 * n
  return int(config.num_encoder_layers * enc + config.num_decoder_layers * dec)


def plan(config, batch, inputs, targets, prompt, param_bytes=4) -> dict:
  """{item: bytes} of a prompt-tuning step, for every remat policy."""
  a = jnp.dtype(config.dtype).itemsize
  L = inputs + prompt
  trainable = prompt * config.emb_dim
  common = {
      "frozen_weights": param_count(config) * param_bytes,
      # The prompt, its gradient and Adafactor's second moment (not factored
      # below 128 rows: P x d values), all float32.
      "trainable_grads_optimizer": 3 * trainable * 4,
      # float32 logits and their gradient over the vocabulary.
      "logits": 2 * batch * targets * config.vocab_size * 4,
      "batch_tokens": batch * (inputs + 2 * targets) * 4,
  }
  return {policy: dict(common, activations=activation_bytes(config, batch, L, targets, policy, a))
          for policy in POLICIES}


def print_plan(args):
  config = _config(args.size, args.dtype, "none")
  rows = []
  for policy, items in plan(config, args.batch, args.inputs, args.targets, args.prompt).items():
    total = sum(items.values())
    rows.append([args.size, policy, f"{args.batch}x{args.inputs}+{args.prompt}",
                 f"{items['frozen_weights'] / GB:.1f}", f"{items['activations'] / GB:.1f}",
                 f"{(items['logits'] + items['trainable_grads_optimizer']) / GB:.2f}",
                 f"{total / GB:.1f}", "yes" if total < args.device_gb * GB else "no"])
    print(json.dumps({"row": "plan", "size": args.size, "remat": policy, "batch": args.batch,
                      "inputs": args.inputs, "prompt": args.prompt,
                      **{k: v / GB for k, v in items.items()}, "total_gb": total / GB,
                      "device_gb": args.device_gb, "fits": total < args.device_gb * GB}))
  print(tables.markdown(["size", "remat", "batch x inputs + prompt", "weights GB", "activations GB",
                   "logits + prompt state GB", "total GB", f"fits {args.device_gb:g} GB"], rows))


# ---------------------------------------------------------------- measured rows


def _config(size, dtype, policy):
  return dataclasses.replace(tsb.make_config(size, dtype), remat_policy=policy)


def _device_peak_gb():
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return peak / GB if peak is not None else None


def _xla_memory_gb(compiled):
  try:
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes) / GB
  except Exception:  # pylint: disable=broad-except
    return None


def _datasheet_peak():
  kind = jax.devices()[0].device_kind
  return next((v for k, v in DATASHEET_BF16.items() if kind.startswith(k)), None)


class Bench:
  """The shared frozen weights of a size, the batch, and the timing of a step."""

  def __init__(self, args):
    self.args = args
    self.frozen = {}
    self.peak = tsb.matmul_peak(args.peak_size, 5, args.dtype)

  def frozen_of(self, size):
    if size not in self.frozen:
      self.frozen.clear()  # one size's weights on the device at a time
      model = encoder_decoder.EncoderDecoderModel(t5.Transformer(_config(size, "float32", "none")))
      params = weights.init_random(model, jax.random.PRNGKey(0), weights.dummy_batch(1, 8, 4))
      self.frozen[size] = trees.split(params, tsb.methods.TRAINABLE_PARAMS)[1]
    return self.frozen[size]

  def train_row(self, size, policy, method="prompt", batch=None):
    args = self.args
    batch = batch or args.batch
    config = _config(size, args.dtype, policy)
    step_args = argparse.Namespace(size=size, batch=batch, inputs=args.inputs,
                                   targets=args.targets, seed=0, warmup=args.warmup,
                                   steps=args.steps, matmul_peak=self.peak, prompt=args.prompt,
                                   smop_prompts=4, smop_length=5)
    data = tsb.make_batch(0, batch, args.inputs, args.targets)
    note = None
    if method == "smop":
      prompt, note = tsb.smop_module(4, 5)
      sites = layers.IDENTITY
    else:
      prompt, sites = tsb.method_parts(method, step_args)
    row = tsb.run_one(step_args, config, prompt, self.frozen_of(size), data, method, note,
                      sites=sites, keep_compiled=True)
    compiled = row.pop("_compiled")
    datasheet = _datasheet_peak()
    flops_per_s = row["model_flops_per_s"]
    items = plan(config, batch, args.inputs, args.targets, row["prompt"])[policy]
    row.update(row="train", remat=policy, xla_memory_gb=_xla_memory_gb(compiled),
               plan_frozen_params=param_count(config),
               device_peak_gb=_device_peak_gb(), plan_gb=sum(items.values()) / GB,
               mfu_measured_peak=row.pop("fraction_of_matmul_peak"),
               datasheet_peak_flops_per_s=datasheet,
               mfu_datasheet=(flops_per_s / datasheet
                              if flops_per_s is not None and datasheet else None))
    return row

  def decode_row(self, size):
    args = self.args
    config = _config(size, args.dtype, "none")
    prompt, _ = tsb.method_parts("prompt", argparse.Namespace(prompt=args.prompt))
    model = encoder_decoder.EncoderDecoderModel(t5.Transformer(config, prompt=prompt))
    trainable = weights.init_trainable(model, jax.random.PRNGKey(0),
                                       weights.dummy_batch(1, args.inputs, 8),
                                       tsb.methods.TRAINABLE_PARAMS)
    params = trees.merge(trainable, self.frozen_of(size))
    data = tsb.make_batch(1, args.batch, args.inputs, args.decode_tokens)
    fn = jax.jit(lambda p, b: model.predict_batch(p, b, max_decode_length=args.decode_tokens))
    start = time.perf_counter()
    jax.block_until_ready(fn(params, data))
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(max(args.steps, 2)):
      start = time.perf_counter()
      jax.block_until_ready(fn(params, data))
      times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"row": "decode", "size": size, "batch": args.batch, "inputs": args.inputs,
            "decode_tokens": args.decode_tokens, "dtype": args.dtype, "decode_s": seconds,
            "tokens_per_s": args.batch * args.decode_tokens / seconds, "compile_s": compile_s,
            "device_kind": jax.devices()[0].device_kind, "device_peak_gb": _device_peak_gb()}

  def numerics_row(self, size):
    args = self.args
    data = tsb.make_batch(2, args.batch, args.inputs, args.targets)
    losses = {}
    for dtype in ("float32", args.dtype):
      prompt, _ = tsb.method_parts("prompt", argparse.Namespace(prompt=args.prompt))
      model = encoder_decoder.EncoderDecoderModel(
          t5.Transformer(_config(size, dtype, "none"), prompt=prompt))
      trainable = weights.init_trainable(model, jax.random.PRNGKey(0),
                                         weights.dummy_batch(1, args.inputs, 8),
                                         tsb.methods.TRAINABLE_PARAMS)
      params = trees.merge(trainable, self.frozen_of(size))
      loss = jax.jit(lambda p, b, m=model: m.loss_fn(p, b, None)[0])(params, data)
      losses[dtype] = float(loss)
    diff = losses[args.dtype] - losses["float32"]
    return {"row": "numerics", "size": size, "batch": args.batch, "inputs": args.inputs,
            "dtype": args.dtype,
            "loss_float32": losses["float32"], f"loss_{args.dtype}": losses[args.dtype],
            "difference": diff, "relative_difference": diff / losses["float32"]}


def largest_batch(bench, size, policy, start):
  """The largest power-of-two batch from `start` whose step compiles and runs."""
  best, batch = None, start
  while batch <= 4096:
    try:
      bench.train_row(size, policy, batch=batch)
    except Exception as e:  # pylint: disable=broad-except  (XLA's out-of-memory error)
      if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
        raise
      break
    best, batch = batch, batch * 2
  return {"row": "largest_batch", "size": size, "remat": policy, "inputs": bench.args.inputs,
          "largest_batch": best, "device_kind": jax.devices()[0].device_kind}


def _fmt(value, scale=1.0, digits=3):
  return "-" if value is None else f"{value / scale:.{digits}g}"


def table(rows) -> str:
  out = []
  for r in rows:
    kind = r["row"]
    if kind == "train":
      what = f"train {r['size']} {r['method']} remat={r['remat']}"
      out.append([what, f"{r['batch']}x{r['inputs']}", _fmt(r["step_s"] * 1e3),
                  _fmt(r["examples_per_s"]), _fmt(r["model_flops_per_s"], 1e12),
                  _fmt(r["mfu_measured_peak"]), _fmt(r["mfu_datasheet"]),
                  _fmt(r["xla_memory_gb"]), _fmt(r["device_peak_gb"]), _fmt(r["plan_gb"])])
    elif kind == "decode":
      out.append([f"decode {r['size']} cached greedy, {r['decode_tokens']} tokens",
                  f"{r['batch']}x{r['inputs']}", _fmt(r["decode_s"] * 1e3),
                  f"{r['tokens_per_s']:.0f} tok/s", "-", "-", "-", "-",
                  _fmt(r["device_peak_gb"]), "-"])
    elif kind == "numerics":
      out.append([f"numerics {r['size']}: loss {r['dtype']} - float32",
                  f"{r['batch']}x{r['inputs']}", "-",
                  f"{r['difference']:+.2e} ({r['relative_difference']:+.1e})",
                  "-", "-", "-", "-", "-", "-"])
    elif kind == "largest_batch":
      out.append([f"largest batch {r['size']} remat={r['remat']}", str(r["largest_batch"]),
                  "-", "-", "-", "-", "-", "-", "-", "-"])
  return tables.markdown(["row", "batch", "ms", "examples/s", "model TFLOP/s",
                         "MFU (measured peak)", "MFU (datasheet)", "XLA GB", "device peak GB",
                         "plan GB"], out)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", action="append", choices=sorted(tsb.SIZES),
                      help="T5 1.1 size(s) to run (default: base, then xxl)")
  parser.add_argument("--remat", action="append", choices=POLICIES,
                      help="REMAT_POLICY(ies) of the train rows (default: all for the "
                           "first size, layer and matmuls for the others)")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=8)
  parser.add_argument("--prompt", type=int, default=100)
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--decode_tokens", type=int, default=64)
  parser.add_argument("--peak_size", type=int, default=8192,
                      help="n of the n x n x n matmul that measures the peak")
  parser.add_argument("--no_methods", action="store_true", help="skip LoRA, MAM, SMoP rows")
  parser.add_argument("--largest_batch", action="store_true",
                      help="also find the largest batch of the last size")
  parser.add_argument("--plan", action="store_true", help="print the memory plan and exit")
  parser.add_argument("--device_gb", type=float, default=80.0,
                      help="the device memory --plan checks against")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  sizes = args.size or ["base", "xxl"]
  if args.plan:
    for size in sizes:
      args.size = size
      print_plan(args)
    return 0
  bench = Bench(args)
  rows = []

  def emit(row):
    rows.append(row)
    print(json.dumps(row), flush=True)

  first = sizes[0]
  for policy in args.remat or POLICIES:
    emit(bench.train_row(first, policy))
  if not args.no_methods:
    for method in ("lora", "mam", "smop"):
      emit(bench.train_row(first, "layer" if first != "tiny" else "none", method))
  emit(bench.decode_row(first))
  emit(bench.numerics_row(first))
  for size in sizes[1:]:
    for policy in args.remat or ("layer", "matmuls"):
      try:
        emit(bench.train_row(size, policy))
      except Exception as e:  # pylint: disable=broad-except
        if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
          raise
        emit({"row": "train_oom", "size": size, "remat": policy, "batch": args.batch,
              "error": str(e).splitlines()[0][:200]})
  if args.largest_batch:
    emit(largest_batch(bench, sizes[-1], (args.remat or ["layer"])[0], args.batch))
  device = jax.devices()[0]
  print(f"\n{device.device_kind} ({jax.default_backend()}, jax {jax.__version__}), "
        f"measured matmul peak {bench.peak / 1e12:.1f} TFLOP/s ({args.dtype}, "
        f"{args.peak_size}^3):\n")
  print(table([r for r in rows if r["row"] != "train_oom"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
