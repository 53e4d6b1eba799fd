"""What a user would run instead: Hugging Face PEFT prompt tuning (PyTorch) on
the same model shape, texts and settings as our benchmarks, timed the same way.

Two steps, because PEFT needs torch (not a dependency of this project) and
the texts come from our seqio task:

  # 1. In the project's environment: the task's examples, tokenised exactly as
  #    pt-train tokenises them (T5's vocabulary, TASK_FEATURE_LENGTHS truncation).
  python bench/peft_baseline.py dump --task taskless_super_glue_rte_v102 \\
      --superglue_data_dir ../shared/data/fewglue \\
      --vocabulary ../shared/data/t5_vocab/spiece.model \\
      --inputs 512 --targets 8 --out /tmp/rte_tokens.npz

  # 2. In an environment with torch, transformers and peft:
  python bench/peft_baseline.py run --tokens /tmp/rte_tokens.npz --size small --batch 8 --prompt 100
  python bench/peft_baseline.py run --fixed 256 --size small --batch 8 --prompt 100

`run` builds a T5 1.1 of the published dimensions with random weights
(`T5ForConditionalGeneration`, gated GELU, untied head, dropout 0.1, float32),
wraps it with PEFT prompt tuning (`PromptTuningConfig`, SEQ_2_SEQ_LM, P
virtual tokens), and trains with transformers' Adafactor at the paper's
settings (lr 0.3, decay rate -0.8, weight decay 1e-5, no parameter scaling,
no relative step, no warm-up init), the loss PEFT's forward computes from
`labels`. Batches are drawn from a fresh `--seed`ed permutation of the token
file each epoch, as transformers' Trainer samples (RandomSampler), and padded
to their longest example, as transformers' DataCollatorForSeq2Seq does
(`--fixed N`: random tokens, every example N inputs long, as
bench/train_step.py). `--warmup` untimed steps, then `--steps` timed steps;
prints one JSON line: median step time, examples/s (and both over the mean
step, `*_mean`, as bench/task_step.py counts), padded-token fraction,
peak RSS. Torch uses every core (torch.get_num_threads() is printed).
`--dtype bfloat16`: the same run under `torch.autocast("cpu", torch.bfloat16)`,
PyTorch's mixed precision (float32 parameters, bf16 matmuls; oneDNN's bf16
kernels on AVX512-BF16 cores), the counterpart of our ACTIVATION_DTYPE
'bfloat16'.
"""
import argparse
import contextlib
import json
import resource
import statistics
import sys
import time

import numpy as np

# T5 1.1 sizes (emb, heads, head_dim, mlp, layers): bench/train_step.py's.
SIZES = {"tiny": (64, 4, 16, 128, 2), "small": (512, 6, 64, 1024, 8),
         "base": (768, 12, 64, 2048, 12), "large": (1024, 16, 64, 2816, 24)}


def dump(args):
  """Writes the task's train examples (token ids, EOS-terminated, truncated)."""
  import seqio  # pylint: disable=g-import-not-at-top
  from prompt_tuning import data  # pylint: disable=g-import-not-at-top
  vocab = seqio.SentencePieceVocabulary(args.vocabulary, extra_ids=100)
  data.configure_sources(vocab, args.superglue_data_dir)
  data.import_task_modules(args.task_module)
  ds = seqio.get_mixture_or_task(args.task).get_dataset(
      {"inputs": args.inputs, "targets": args.targets}, split=args.split, shuffle=False,
      num_epochs=1)
  ds = seqio.EncDecFeatureConverter(pack=False)(
      ds, {"inputs": args.inputs, "targets": args.targets})
  inputs, targets = [], []
  for ex in ds.as_numpy_iterator():
    inputs.append(ex["encoder_input_tokens"][ex["encoder_input_tokens"] > 0])
    targets.append(ex["decoder_target_tokens"][ex["decoder_target_tokens"] > 0])
  np.savez(args.out, inputs=np.array(inputs, dtype=object), targets=np.array(targets, dtype=object),
           task=args.task)
  lengths = [len(x) for x in inputs]
  print(json.dumps({"examples": len(inputs), "mean_input_tokens": float(np.mean(lengths)),
                    "max_input_tokens": int(max(lengths)), "out": args.out}))


def _pad(rows, length=None):
  length = length or max(len(r) for r in rows)
  out = np.zeros((len(rows), length), np.int64)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def run(args):
  import torch  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from peft import PromptTuningConfig, TaskType, get_peft_model
  from transformers import T5Config, T5ForConditionalGeneration
  # pylint: enable=g-import-not-at-top
  from transformers.optimization import Adafactor  # pylint: disable=g-import-not-at-top

  torch.manual_seed(args.seed)
  emb, heads, head_dim, mlp, layers = SIZES[args.size]
  config = T5Config(vocab_size=32128, d_model=emb, d_kv=head_dim, d_ff=mlp, num_layers=layers,
                    num_decoder_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu",
                    tie_word_embeddings=False, dropout_rate=0.1, decoder_start_token_id=0,
                    pad_token_id=0, eos_token_id=1)
  model = get_peft_model(T5ForConditionalGeneration(config),
                         PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM,
                                            num_virtual_tokens=args.prompt))
  model.train()
  optimizer = Adafactor([p for p in model.parameters() if p.requires_grad], lr=0.3,
                        decay_rate=-0.8, weight_decay=1e-5, scale_parameter=False,
                        relative_step=False, warmup_init=False, beta1=None, clip_threshold=1.0)
  rng = np.random.RandomState(args.seed)
  if args.fixed:
    source = [(rng.randint(2, 32000, args.fixed),
               np.append(rng.randint(2, 32000, args.targets - 1), 1))
              for _ in range(args.batch * 4)]
  else:
    with np.load(args.tokens, allow_pickle=True) as z:
      source = list(zip(z["inputs"], z["targets"]))
  autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.dtype == "bfloat16"
              else contextlib.nullcontext)
  order = []
  times, real, padded = [], 0, 0
  for step in range(args.warmup + args.steps):
    while len(order) < args.batch:  # the next epoch's permutation, as RandomSampler draws it
      order.extend(rng.permutation(len(source)))
    rows = [source[i] for i in order[:args.batch]]
    del order[:args.batch]
    inputs = _pad([r[0] for r in rows])
    labels = _pad([r[1] for r in rows])
    input_ids = torch.from_numpy(inputs)
    attention_mask = (input_ids > 0).long()
    labels_t = torch.from_numpy(labels)
    labels_t[labels_t == 0] = -100
    start = time.perf_counter()
    with autocast():
      loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels_t).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    elapsed = time.perf_counter() - start
    if step >= args.warmup:
      times.append(elapsed)
      real += int((inputs > 0).sum()) + args.batch * args.prompt
      padded += inputs.size + args.batch * args.prompt
  step_s = statistics.median(times)
  print(json.dumps({
      "impl": "hf_peft", "size": args.size, "batch": args.batch, "prompt": args.prompt,
      "dtype": args.dtype,
      "data": f"fixed {args.fixed}" if args.fixed else args.tokens,
      "steps": args.steps, "step_s": step_s, "examples_per_s": args.batch / step_s,
      # Over the mean step, as bench/task_step.py's examples_per_s.
      "step_s_mean": statistics.mean(times),
      "examples_per_s_mean": args.batch / statistics.mean(times),
      "encoder_padded_fraction": 1 - real / padded, "final_loss": float(loss),
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="mode", required=True)
  d = sub.add_parser("dump")
  d.add_argument("--task", required=True)
  d.add_argument("--task_module", default="prompt_tuning.tasks.super_glue")
  d.add_argument("--superglue_data_dir", required=True)
  d.add_argument("--vocabulary", required=True)
  d.add_argument("--split", default="train")
  d.add_argument("--inputs", type=int, default=512)
  d.add_argument("--targets", type=int, default=8)
  d.add_argument("--out", required=True)
  r = sub.add_parser("run")
  r.add_argument("--tokens")
  r.add_argument("--fixed", type=int, help="random inputs of this many tokens instead")
  r.add_argument("--size", choices=sorted(SIZES), default="small")
  r.add_argument("--batch", type=int, default=8)
  r.add_argument("--prompt", type=int, default=100)
  r.add_argument("--targets", type=int, default=8, help="with --fixed")
  r.add_argument("--steps", type=int, default=10)
  r.add_argument("--warmup", type=int, default=2)
  r.add_argument("--seed", type=int, default=0)
  r.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                 help="bfloat16: under torch.autocast (mixed precision)")
  args = parser.parse_args(argv)
  if args.mode == "dump":
    dump(args)
  elif not (args.tokens or args.fixed):
    parser.error("run needs --tokens FILE or --fixed N")
  else:
    run(args)


if __name__ == "__main__":
  sys.exit(main())
