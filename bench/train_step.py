"""Benchmarks the prompt-tuning train step of `pt-train` on a random-weight T5 1.1.

  python bench/train_step.py --size small --batch 8 --inputs 256 --targets 8 --prompt 100
  python bench/train_step.py --size small --compare-smop   # prompt P=100 vs SMoP 4x5
  python bench/train_step.py --size small --method lora    # or prefix, adapter, mam, ...

What is timed: the jitted step of `training.step.make_train_step` (jitted with
`donate_argnums=(0, 1)`, exactly as `pt-train` does), on a frozen T5 1.1 with
random weights (`weights.init_random`), the method's parameters (by
default the prompt) as the only trainable ones (`methods.TRAINABLE_PARAMS`;
`trainable_params` and `frozen_params` count them), `optimizers.adafactor()` with the
paper's settings, dropout on (rate 0.1), and one random token batch (ids in
[2, 32000), every position real, targets ending with EOS = 1) reused each step.
The step is compiled ahead of time (`compile_s`: lowering + XLA compilation),
then run `--warmup` untimed steps, then `--steps` timed steps, each waited for
with `block_until_ready`; `step_s` is the median. One JSON line per run goes
to stdout. `peak_rss_mb` is the process's peak so far: run one method per
process to compare methods' memory. `xla_temp_mb` is XLA's scratch memory of
the compiled step (the activations kept for the backward pass): what
`--remat` (the frozen stack's remat policy, REMAT_POLICY: none, layer,
matmuls, auto) changes; `remat` in the JSON is the policy applied.

FLOP counting (`count_flops`; `model_flops_per_step`). Only matmuls are
counted, analytically; softmax, norms, dropout, activations, the loss and the
optimizer are ignored, as are embedding lookups (gathers). Notation: batch b,
encoder length L = prompt tokens + input tokens, decoder length T, d = emb_dim,
n = num_heads * head_dim, f = mlp_dim, g = len(mlp_activations) (2 for T5
1.1's gated GELU), V = vocab_size. A matmul [m, k] x [k, p] costs 2*m*k*p.

Forward, per encoder layer: q, k, v, out projections 4 * 2*b*L*d*n; attention
scores and attention-weighted values 2 * 2*b*L*L*n; MLP (g+1) * 2*b*L*d*f.
Per decoder layer: self-attention projections 4 * 2*b*T*d*n and
scores/values 2 * 2*b*T*T*n; cross-attention query and out projections
2 * 2*b*T*d*n, key and value projections (over the encoder output)
2 * 2*b*L*d*n, scores/values 2 * 2*b*T*L*n; MLP (g+1) * 2*b*T*d*f. Logits
(untied `logits_dense` or tied embedding alike): 2*b*T*d*V, once per target
token.

Training (`training=True`) = forward + backward. The weights are frozen, so the
backward pass computes no weight gradient: a matmul costs, on top of its
forward, one more matmul of the same size for each operand that is an
activation depending on the prompt (JAX differentiates nothing else). Hence:
  * weight matmuls (x @ W): 2x forward (forward + activation gradient);
  * attention scores (q @ k^T) and values (p @ v), both operands activations:
    3x forward (forward + gradients of both operands);
  * except in the first decoder layer, which the prompt reaches only through
    the encoder output: its self-attention (projections, scores, values) and
    its cross-attention query projection are forward only (1x), its
    cross-attention scores 2x (only the key side needs a gradient); its
    cross-attention key/value/out projections, values (3x) and MLP count as
    above.
So training is a little over 2x the forward FLOPs. A SMoP router (if any) is
not counted (it is O(b*d*k), negligible).

`matmul_peak_flops_per_s` is measured in the same run: the best of a few
jitted [2048, 2048] x [2048, 2048] matmuls (`--peak-size`) in the step's
dtype, through the model's own product (layers.matmul), 2*n^3 FLOPs each, on
the default device; `fraction_of_matmul_peak` is
model_flops_per_s over it: how much of what this machine's matmuls reach the
step uses (None when model FLOPs are not counted).

`xla_flops_per_step` is XLA's own count (`compiled.cost_analysis()['flops']`)
of the whole compiled step, elementwise ops included; None when the backend
does not report it.

`--method` (repeatable; default `prompt`) picks what trains, with the settings
of its gin file (gin/methods/): `prompt` (P = `--prompt`), `smop`, `prefix`
(l = 200 in every attention), `lora` (r = 8, alpha 8, query and value),
`lora_all` (r = 8 on every projection), `adapter` (sequential, r = 200, after
every sublayer), `parallel_adapter` (r = 512, s = 4, at the MLPs), `mam`
(prefix l = 30 + that parallel adapter), `prompt+lora`. The other methods
train parameters inside every layer, so the backward pass runs through the
whole model and the prompt's FLOP rule above does not hold: their
`model_flops_*` fields are None (XLA's count is still given).

`--compare-smop` runs plain prompt tuning (`--prompt`, default 100) and SMoP
(`--smop-prompts` x `--smop-length`, default 4 x 5) on the same frozen model and
batch, then prints a line with `smop_over_prompt_step_ratio` and
`smop_over_prompt_flops_ratio`. When `prompt_tuning.methods.smop` cannot be imported
(or its `SMoP` cannot be built), SMoP is emulated by a plain prompt of
`--smop-length` tokens (a routed SMoP prepends one prompt of that length) and
the JSON says so in `note`.
"""
import argparse
import dataclasses
import json
import resource
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import methods
from prompt_tuning.methods import initializers
from prompt_tuning.methods import prompts
from prompt_tuning.model import encoder_decoder
from prompt_tuning.model import layers
from prompt_tuning.model import t5
from prompt_tuning.model import weights
from prompt_tuning.storage import trees
from prompt_tuning.training import optimizers
from prompt_tuning.training import step as train_step

VOCAB_SIZE = 32128
MAX_TOKEN_ID = 32000  # sentencepiece ids; 32000..32127 are extra ids / padding.
EOS_ID = 1

# (emb_dim, num_heads, head_dim, mlp_dim, encoder layers, decoder layers):
# gin/models/sizes/*.gin; tiny is ours, the rest T5 1.1's published sizes.
SIZES = {
    "tiny": (64, 4, 16, 128, 2, 2),
    "small": (512, 6, 64, 1024, 8, 8),
    "base": (768, 12, 64, 2048, 12, 12),
    "large": (1024, 16, 64, 2816, 24, 24),
    "xl": (2048, 32, 64, 5120, 24, 24),
    "xxl": (4096, 64, 64, 10240, 24, 24),
}

SMOP_EMULATED_NOTE = "smop module not available; emulated with a {}-token prompt"


def make_config(size, dtype="float32"):
  """A T5 1.1 config (gated GELU, untied logits, vocab 32128) of a named size."""
  emb, heads, head_dim, mlp, enc, dec = SIZES[size]
  return t5.T5Config(vocab_size=VOCAB_SIZE, emb_dim=emb, num_heads=heads, head_dim=head_dim,
                     mlp_dim=mlp, num_encoder_layers=enc, num_decoder_layers=dec,
                     mlp_activations=("gelu", "linear"), logits_via_embedding=False,
                     dropout_rate=0.1, dtype=dtype)


def count_flops(config, batch, enc_len, dec_len, training=True):
  """Matmul FLOPs of one step (see the module docstring for the exact rule)."""
  b, L, T = batch, enc_len, dec_len
  d, f, V = config.emb_dim, config.mlp_dim, config.vocab_size
  n = config.num_heads * config.head_dim
  g = len(config.mlp_activations)
  mm = lambda m, k, p: 2 * m * k * p
  # (forward flops, multiplier when training) for each matmul group.
  encoder_layer = [
      (4 * mm(b * L, d, n), 2),                   # q, k, v, out projections
      (2 * b * mm(L, n, L), 3),                   # scores + values (2 * 2*b*L*L*n)
      ((g + 1) * mm(b * L, d, f), 2),             # wi_0..wi_{g-1}, wo
  ]

  def decoder_layer(first):
    return [
        (4 * mm(b * T, d, n), 1 if first else 2),  # self-attention q, k, v, out
        (2 * b * mm(T, n, T), 1 if first else 3),  # self-attention scores + values
        (mm(b * T, d, n), 1 if first else 2),      # cross-attention query
        (mm(b * T, n, d), 2),                      # cross-attention out
        (2 * mm(b * L, d, n), 2),                  # cross-attention key, value
        (b * mm(T, n, L), 2 if first else 3),      # cross-attention scores
        (b * mm(T, L, n), 3),                      # cross-attention values
        ((g + 1) * mm(b * T, d, f), 2),            # MLP
    ]

  groups = encoder_layer * config.num_encoder_layers
  for i in range(config.num_decoder_layers):
    groups += decoder_layer(i == 0)
  groups.append((mm(b * T, d, V), 2))              # logits
  return int(sum(fl * (mult if training else 1) for fl, mult in groups))


def make_batch(seed, batch, inputs, targets):
  """Random full-length token batch in seqio's EncDecFeatureConverter layout."""
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, MAX_TOKEN_ID, (batch, inputs), dtype=np.int32)
  tgt = rng.integers(2, MAX_TOKEN_ID, (batch, targets), dtype=np.int32)
  tgt[:, -1] = EOS_ID
  dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": np.ones((batch, targets), np.float32)}


def smop_module(num_prompts, length):
  """(SMoP module, None) or (an emulating Prompt of `length` tokens, note)."""
  try:
    from prompt_tuning.methods import smop  # pylint: disable=g-import-not-at-top
    return smop.SMoP(num_prompts=num_prompts, length=length,
                     init=initializers.random_uniform()), None
  except (ImportError, AttributeError, TypeError) as e:
    note = SMOP_EMULATED_NOTE.format(length)
    if not isinstance(e, ImportError):
      note += f" (prompt_tuning.methods.smop.SMoP could not be built: {e})"
    return prompts.Prompt(length=length, init=initializers.random_uniform()), note


def method_parts(name, args):
  """(prompt module or None, layers.Sites) of a `--method` name (gin/methods/ defaults)."""
  prompt = prompts.Prompt(length=args.prompt, init=initializers.random_uniform())
  parallel = methods.AdapterMethod(512, 4.0, True, ("mlp",))
  table = {
      "prompt": (prompt, layers.IDENTITY),
      "prefix": (None, methods.Methods(prefix_tuning=methods.PrefixMethod(200))),
      "lora": (None, methods.Methods(lora=methods.LoRAMethod())),
      "lora_all": (None, methods.Methods(lora=methods.LoRAMethod(targets=methods.PROJECTIONS))),
      "adapter": (None, methods.Methods(adapters=methods.AdapterMethod(200))),
      "parallel_adapter": (None, methods.Methods(adapters=parallel)),
      "mam": (None, methods.Methods(prefix_tuning=methods.PrefixMethod(30), adapters=parallel)),
      "prompt+lora": (prompt, methods.Methods(lora=methods.LoRAMethod())),
  }
  return table[name]


METHODS = ("prompt", "smop", "prefix", "lora", "lora_all", "adapter", "parallel_adapter", "mam",
           "prompt+lora")


def _peak_rss_mb():
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes vs KiB


def _xla_temp_mb(compiled):
  """XLA's scratch memory of the compiled step (activations kept for the
  backward pass and temporaries): what a remat policy changes. None when the
  backend does not report it."""
  try:
    return compiled.memory_analysis().temp_size_in_bytes / 2 ** 20
  except Exception:  # pylint: disable=broad-except
    return None


def _xla_flops(compiled):
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops is not None and flops >= 0 else None


def matmul_peak(n=2048, repeats=5, dtype="float32"):
  """FLOP/s of the best of `repeats` jitted [n, n] x [n, n] matmuls (2 n^3
  FLOPs) in `dtype`, through the model's own product (layers.matmul: for
  bfloat16 on CPU, bf16 operands with float32 sums, XLA:CPU's fastest form)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
  matmul = jax.jit(lambda a, b: layers.matmul("...i,io->...o", a, b, dtype))
  jax.block_until_ready(matmul(a, b))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best


def run_one(args, config, prompt, frozen, batch, method, note=None, sites=layers.IDENTITY,
            keep_compiled=False):
  """Compiles and times the train step of one method; returns the JSON row
  (with the compiled step under '_compiled' if `keep_compiled`)."""
  model = encoder_decoder.EncoderDecoderModel(
      module=t5.Transformer(config, prompt=prompt, sites=sites))
  shapes_batch = weights.dummy_batch(1, args.inputs, args.targets)
  trainable = weights.init_trainable(model, jax.random.PRNGKey(args.seed), shapes_batch,
                                          methods.TRAINABLE_PARAMS)
  enc_len = jax.eval_shape(lambda p: model.encode(p, batch["encoder_input_tokens"]),
                           trees.merge(trainable, frozen))[0].shape[1]
  optimizer = optimizers.adafactor()
  opt_state = optimizer.init(trainable)
  step_fn = jax.jit(train_step.make_train_step(model, optimizer), donate_argnums=(0, 1))
  rng = jax.random.PRNGKey(args.seed)

  start = time.perf_counter()
  compiled = step_fn.lower(trainable, opt_state, frozen, batch, jnp.int32(0), rng).compile()
  compile_s = time.perf_counter() - start

  times, metrics = [], None
  for i in range(args.warmup + args.steps):
    start = time.perf_counter()
    trainable, opt_state, metrics = compiled(trainable, opt_state, frozen, batch,
                                             jnp.int32(i), rng)
    jax.block_until_ready((trainable, opt_state, metrics))
    if i >= args.warmup:
      times.append(time.perf_counter() - start)

  step_s = statistics.median(times)
  flops = (count_flops(config, args.batch, enc_len, args.targets)
           if sites is layers.IDENTITY else None)
  device = jax.devices()[0]
  row = {
      "method": method,
      "size": args.size, "batch": args.batch, "inputs": args.inputs, "targets": args.targets,
      "prompt": enc_len - args.inputs, "encoder_length": enc_len,
      "dtype": config.dtype, "backend": jax.default_backend(),
      "remat": t5.resolve_remat_policy(config.remat_policy),
      "device_kind": device.device_kind, "num_devices": jax.device_count(),
      "steps": args.steps, "warmup": args.warmup,
      "step_s": step_s, "step_s_min": min(times), "step_s_max": max(times),
      "examples_per_s": args.batch / step_s,
      "tokens_per_s": args.batch * (enc_len + args.targets) / step_s,
      "model_flops_per_step": flops,
      "model_flops_per_s": flops / step_s if flops is not None else None,
      "matmul_peak_flops_per_s": args.matmul_peak,
      "fraction_of_matmul_peak": (flops / step_s / args.matmul_peak
                                  if flops is not None else None),
      "xla_flops_per_step": _xla_flops(compiled),
      "trainable_params": methods.count(trainable),
      "frozen_params": methods.count(frozen),
      "loss": float(metrics["loss"]),
      "peak_rss_mb": _peak_rss_mb(),
      "xla_temp_mb": _xla_temp_mb(compiled),
      "compile_s": compile_s,
  }
  if method == "smop":
    row.update(smop_prompts=args.smop_prompts, smop_length=args.smop_length,
               smop_emulated=note is not None)
  if note:
    row["note"] = note
  if keep_compiled:
    row["_compiled"] = compiled
  return row


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="small")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=256, help="encoder input tokens")
  parser.add_argument("--targets", type=int, default=8, help="decoder tokens")
  parser.add_argument("--prompt", type=int, default=100, help="prompt length")
  parser.add_argument("--steps", type=int, default=10, help="timed steps")
  parser.add_argument("--warmup", type=int, default=2,
                      help="untimed steps after compilation (timed apart as compile_s)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                      help="activation dtype (default float32 on CPU, bfloat16 otherwise)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--remat", choices=t5.REMAT_POLICIES, default="auto",
                      help="remat policy of the frozen stack's layers (REMAT_POLICY)")
  parser.add_argument("--smop", action="store_true",
                      help="benchmark SMoP (--smop-prompts x --smop-length) instead of --prompt")
  parser.add_argument("--compare-smop", action="store_true",
                      help="run both --prompt and SMoP and print their ratios")
  parser.add_argument("--method", action="append", choices=METHODS, default=None,
                      help="what trains (repeatable; default prompt, or smop with --smop)")
  parser.add_argument("--smop-prompts", type=int, default=4)
  parser.add_argument("--smop-length", type=int, default=5)
  parser.add_argument("--peak-size", type=int, default=2048,
                      help="n of the [n, n] matmul (in --dtype) timed as this machine's peak")
  args = parser.parse_args(argv)
  for name in ("batch", "inputs", "targets", "prompt", "steps", "smop_prompts", "smop_length",
               "peak_size"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be >= 1")
  if args.warmup < 0:
    parser.error("--warmup must be >= 0")
  if args.dtype is None:
    args.dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  return args


def prompt_model(config, prompt_length, inputs, targets, seed):
  """(model with a random-uniform prompt of `prompt_length`, its frozen
  parameters drawn at random with seed + 1, stored as pt-train stores them:
  weights.narrow_frozen)."""
  prompt = prompts.Prompt(length=prompt_length, init=initializers.random_uniform())
  model = encoder_decoder.EncoderDecoderModel(module=t5.Transformer(config, prompt=prompt))
  return model, weights.init_random_frozen(
      model, jax.random.PRNGKey(seed + 1), weights.dummy_batch(1, inputs, targets),
      methods.TRAINABLE_PARAMS)


def main(argv=None):
  """Runs the benchmark(s); prints and returns the JSON rows."""
  args = parse_args(argv)
  args.matmul_peak = matmul_peak(args.peak_size, dtype=args.dtype)
  # CPU backends may not donate buffers; pt-train sees the same harmless warning.
  warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
  config = dataclasses.replace(make_config(args.size, args.dtype), remat_policy=args.remat)
  batch = jax.device_put(make_batch(args.seed, args.batch, args.inputs, args.targets))
  # The frozen model, shared by every run (its tree does not depend on the prompt).
  init_model, frozen = prompt_model(config, args.prompt, args.inputs, args.targets, args.seed)
  plain = init_model.module.prompt

  runs = []
  if args.method and not args.compare_smop:
    for name in args.method:
      if name == "smop":
        runs.append(("smop",) + smop_module(args.smop_prompts, args.smop_length)
                    + (layers.IDENTITY,))
      else:
        module, sites = method_parts(name, args)
        runs.append((name, module, None, sites))
  else:
    if args.compare_smop or not args.smop:
      runs.append(("prompt", plain, None, layers.IDENTITY))
    if args.compare_smop or args.smop:
      runs.append(("smop",) + smop_module(args.smop_prompts, args.smop_length)
                  + (layers.IDENTITY,))
  rows = []
  for method, module, note, sites in runs:
    row = run_one(args, config, module, frozen, batch, method, note, sites)
    print(json.dumps(row), flush=True)
    rows.append(row)
  if args.compare_smop:
    base, smop_row = rows
    summary = {
        "size": args.size, "batch": args.batch, "inputs": args.inputs, "targets": args.targets,
        "prompt": base["prompt"], "smop_prompts": args.smop_prompts,
        "smop_length": args.smop_length, "smop_emulated": smop_row["smop_emulated"],
        "smop_over_prompt_step_ratio": smop_row["step_s"] / base["step_s"],
        "smop_over_prompt_flops_ratio": (smop_row["model_flops_per_step"]
                                         / base["model_flops_per_step"]),
    }
    if "note" in smop_row:
      summary["note"] = smop_row["note"]
    print(json.dumps(summary), flush=True)
    rows.append(summary)
  return rows


if __name__ == "__main__":
  main()
