"""Benchmarks greedy decoding with and without the key/value cache.

  python bench/decode.py --size small --batch 8 --inputs 256 --prompt 100 --length 64 128

On a random-weight T5 1.1 (bench/train_step.py's sizes) with a prompt, times
the jitted `predict_batch` (encoder once, then `greedy_decode` of `--length`
tokens) with `cached=True` (one decoder token per step over per-layer
key/value caches) and `cached=False` (the decoder re-run over the whole
sequence each step). EOS's logit column is zeroed so that every row runs the
full length (with random weights EOS would otherwise end rows by chance).
Compilation is timed apart (`compile_s`); `decode_s` is the median of
`--repeats` runs, `encode_s` that of the encoder alone (jitted apart), and
`loop_s_per_token` = (decode_s - encode_s) / length. One JSON line per
(length, path), then one per length with
`speedup` = uncached / cached and whether both produced the same tokens.
"""
import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import train_step  # pylint: disable=g-import-not-at-top,wrong-import-position

from prompt_tuning.methods import initializers  # pylint: disable=g-import-not-at-top
from prompt_tuning.methods import prompts  # pylint: disable=g-import-not-at-top
from prompt_tuning.model import encoder_decoder  # pylint: disable=g-import-not-at-top
from prompt_tuning.model import t5  # pylint: disable=g-import-not-at-top
from prompt_tuning.model import weights  # pylint: disable=g-import-not-at-top


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=sorted(train_step.SIZES), default="small")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=256)
  parser.add_argument("--prompt", type=int, default=100)
  parser.add_argument("--length", type=int, nargs="+", default=[64, 128])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--paths", nargs="+", choices=("cached", "uncached"),
                      default=["cached", "uncached"])
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
  args = parser.parse_args(argv)
  dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
  config = train_step.make_config(args.size, dtype)
  prompt = prompts.Prompt(length=args.prompt, init=initializers.random_uniform())
  model = encoder_decoder.EncoderDecoderModel(module=t5.Transformer(config, prompt=prompt))
  params = weights.init_random(model, jax.random.PRNGKey(0),
                                    weights.dummy_batch(1, args.inputs, 4))
  params["decoder"]["logits_dense"]["kernel"] = (
      params["decoder"]["logits_dense"]["kernel"].at[:, encoder_decoder.EOS_ID].set(0.0))
  # The frozen weights stored as pt-eval stores a checkpoint's (load_frozen).
  params = weights.narrow_frozen(params, dtype)
  tokens = train_step.make_batch(0, args.batch, args.inputs, 4)["encoder_input_tokens"]
  encode = jax.jit(model.encode).lower(params, tokens).compile()
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    jax.block_until_ready(encode(params, tokens))
    times.append(time.perf_counter() - start)
  encode_s = statistics.median(times)
  rows = []
  for length in args.length:
    batch = {"encoder_input_tokens": tokens,
             "decoder_target_tokens": jnp.ones((args.batch, length), jnp.int32)}
    out = {}
    for path in args.paths:
      fn = jax.jit(lambda p, b, cached=(path == "cached"): model.predict_batch(p, b, cached=cached))
      start = time.perf_counter()
      compiled = fn.lower(params, batch).compile()
      compile_s = time.perf_counter() - start
      times = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        out[path] = np.asarray(jax.block_until_ready(compiled(params, batch)))
        times.append(time.perf_counter() - start)
      row = {"size": args.size, "batch": args.batch, "inputs": args.inputs,
             "prompt": args.prompt, "length": length, "path": path, "dtype": dtype,
             "backend": jax.default_backend(), "compile_s": round(compile_s, 3),
             "decode_s": round(statistics.median(times), 4),
             "encode_s": round(encode_s, 4),
             "loop_s_per_token": round((statistics.median(times) - encode_s) / length, 5),
             "times_s": [round(t, 4) for t in times],
             "all_rows_full_length": bool(np.all(out[path] != 0))}
      print(json.dumps(row), flush=True)
      rows.append(row)
    if len(out) == 2:
      by = {r["path"]: r["decode_s"] for r in rows if r["length"] == length}
      summary = {"length": length, "speedup": round(by["uncached"] / by["cached"], 2),
                 "same_tokens": bool(np.array_equal(out["cached"], out["uncached"]))}
      print(json.dumps(summary), flush=True)
      rows.append(summary)
  return rows


if __name__ == "__main__":
  main()
