"""The embedded default: a complete prompt-tuning experiment on a laptop CPU.

`run.sh` drives it through the real programs:
  1. `python -m prompt_tuning.demo pretrain --out DIR` teaches a tiny T5 1.1
     (gin/models/demo_prompt.gin) two skills, "first: w1 w2 w3" -> w1 and
     "last: w1 w2 w3" -> w3 (tasks/demo.py), by full training with Adam, and
     writes it as a T5X checkpoint: this is the frozen model.
  2. `pt-train` tunes a prompt on "w1 w2 w3" -> w3 with NO instruction: the
     prompt has to learn to stand in for "last:".
  3. `pt-eval` scores the step-0 (random) prompt and the learned prompt on
     held-out word combinations; `python -m prompt_tuning.demo compare`
     prints both accuracies.
"""
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import optax

from prompt_tuning.model import losses

DEMO_GIN = "models/demo_prompt.gin"


def demo_model(bindings=()):
  """The tiny T5 of gin/models/demo_prompt.gin (any extra gin bindings applied)."""
  from prompt_tuning import configurables  # pylint: disable=g-import-not-at-top
  return configurables.build_model([DEMO_GIN], bindings)


def pretrain(model, steps=1500, batch_size=64, learning_rate=3e-3, seed=0, log=print):
  """Full training of every weight on `demo_pretrain`; returns the params."""
  from prompt_tuning import data  # pylint: disable=g-import-not-at-top
  from prompt_tuning.model import weights  # pylint: disable=g-import-not-at-top
  import prompt_tuning.tasks.demo  # pylint: disable=g-import-not-at-top,unused-import
  ds = data.get_dataset("demo_pretrain", {"inputs": 32, "targets": 8}, "train", batch_size,
                        seed=seed)
  iterator = ds.as_numpy_iterator()
  first = next(iterator)
  params = weights.init_random(model, jax.random.PRNGKey(seed),
                                    {k: jnp.asarray(v[:1]) for k, v in first.items()})
  # The prompt is not part of the frozen model.
  params["encoder"] = {k: v for k, v in params["encoder"].items() if k != "prompt"}
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, learning_rate, 100, steps), 
                   weight_decay=0.0)
  opt_state = tx.init(params)
  no_prompt = model.module.clone(prompt=None)

  @jax.jit
  def step(params, opt_state, batch):
    def loss_fn(p):
      logits = no_prompt.apply({"params": p}, batch["encoder_input_tokens"],
                               batch["decoder_input_tokens"], batch["decoder_target_tokens"])
      loss_weights = batch["decoder_loss_weights"]
      ll = losses.token_log_likelihoods(logits, batch["decoder_target_tokens"])
      return -jnp.sum(ll * loss_weights) / jnp.sum(loss_weights)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  start = time.time()
  for i in range(steps):
    batch = first if i == 0 else next(iterator)
    params, opt_state, loss = step(params, opt_state, batch)
    if (i + 1) % 250 == 0 or i + 1 == steps:
      log(f"pretrain step {i + 1}/{steps} loss/token {float(loss):.4f} "
          f"({time.time() - start:.0f}s)")
  return jax.device_get(params)


def cmd_pretrain(out: str, steps: int, seed: int):
  from prompt_tuning.storage import t5x_checkpoints  # pylint: disable=g-import-not-at-top
  path = os.path.join(out, f"checkpoint_{steps}")
  if os.path.exists(os.path.join(path, "checkpoint")):
    print(f"frozen model already at {path}")
    return
  params = pretrain(demo_model(), steps=steps, seed=seed)
  print("wrote", t5x_checkpoints.save_checkpoint(out, params, steps))


def read_accuracy(eval_dir, task="demo_last_word"):
  """{step: accuracy} from seqio's JSONLogger output."""
  out = {}
  path = os.path.join(eval_dir, f"{task}-metrics.jsonl")
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      out[row["step"]] = row["accuracy"]
  return out


def cmd_compare(initial_dir: str, learned_dir: str):
  initial = read_accuracy(initial_dir)
  learned = read_accuracy(learned_dir)
  a0, a1 = initial[min(initial)], learned[max(learned)]
  print()
  print("Held-out accuracy on demo_last_word ('w1 w2 w3' -> w3, word combinations unseen in")
  print("training), frozen tiny T5 1.1, only the prompt trained:")
  print(f"  initial prompt (step {min(initial)}):  {a0:6.2f}%")
  print(f"  learned prompt (step {max(learned)}): {a1:6.2f}%")
  if a1 <= a0 + 20:
    print("the learned prompt is not clearly better than the initial one", file=sys.stderr)
    sys.exit(1)


PROG = "python -m prompt_tuning.demo"
USAGE = ("COMMAND (pretrain --out=DIR [--steps=1500] [--seed=0], or compare "
         "--initial=EVAL_DIR --learned=EVAL_DIR)")
COMMANDS = {"pretrain": ("out", "steps", "seed"), "compare": ("initial", "learned")}


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("out", None, "pretrain: where to write the frozen T5X checkpoint.")
  flags.DEFINE_integer("steps", 1500, "pretrain: full-training steps.", lower_bound=1)
  flags.DEFINE_integer("seed", 0, "pretrain: random seed.")
  flags.DEFINE_string("initial", None, "compare: EVAL_OUTPUT_DIR of the step-0 prompt.")
  flags.DEFINE_string("learned", None, "compare: EVAL_OUTPUT_DIR of the learned prompt.")
  return flags.FLAGS


def main(argv=None):
  """`python -m prompt_tuning.demo pretrain|compare ...` (absl flags)."""
  from prompt_tuning import command  # pylint: disable=g-import-not-at-top
  values = _define_flags()

  def run(name):
    if name not in COMMANDS:
      command.fail(PROG, f"unknown command {name!r}: usage: {PROG} {USAGE}")
    for other, names in COMMANDS.items():
      for flag in names:
        if other != name and flag not in COMMANDS[name] and values[flag].present:
          command.fail(PROG, f"--{flag} belongs to {other}, not {name}: usage: {PROG} {USAGE}")
    missing = [f"--{f}" for f in COMMANDS[name] if f not in ("steps", "seed")
               and values[f].value is None]
    if missing:
      command.fail(PROG, f"{name} needs {' and '.join(missing)}: usage: {PROG} {USAGE}")
    if name == "pretrain":
      command.load_tensorflow()  # the data pipeline's (seqio): quietly
      cmd_pretrain(values.out, values.steps, values.seed)
    else:
      cmd_compare(values.initial, values.learned)

  command.run(PROG, run, argv=argv, positional=1, usage=USAGE)


if __name__ == "__main__":
  main()
