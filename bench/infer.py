"""Times pt-infer on mixed-task batches against the same examples task by task.

  python bench/infer.py                         # 3 tasks, 20 and 256 examples each
  python bench/infer.py --per_task 64 --mode warm

On the tiny T5 1.1 of the tests (gin/models/sizes/tiny.gin with EMBED_DIM 32,
vocabulary 384, float32) with random frozen weights written as a T5X
checkpoint, three tasks with their own random [6, 32] prompts: `demo_last_word`
and `demo_pretrain` (greedy decoding) and `bench_class` (registered here:
labels x, y, z, rank classification), `--per_task` validation examples of each,
BATCH_SIZE 32:

- `warm`: one `predict.Predictor` (every task's prompt in its table) after a
  first untimed pass compiled it: the examples interleaved (every batch mixes
  the tasks) against the same examples grouped by task (one `predict` per task:
  batches of one task, the last one of each task partly empty);
- `cli`: one `pt-infer` process over all examples against one `pt-infer`
  process per task (start-up and compilation included).

Prints one JSON line per (mode, per_task): {"mode", "per_task", "examples",
"mixed_s", "by_task_s", "mixed_examples_per_s", "by_task_examples_per_s"},
and checks that both ways predict the same.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import seqio

from prompt_tuning import configurables
from prompt_tuning.evaluation import predict
from prompt_tuning.model import partitioning
from prompt_tuning.model import weights
from prompt_tuning.storage import t5x_checkpoints
from prompt_tuning.storage import trees
from prompt_tuning.tasks import demo  # pylint: disable=unused-import  (registers demo_*)

REPO = pathlib.Path(__file__).resolve().parents[1]
FILES = ["models/t5_1_1_small_prompt.gin", "models/sizes/tiny.gin"]
MODEL = ["NUM_EMBEDDINGS = 384", "ACTIVATION_DTYPE = 'float32'", "PROMPT_LENGTH = 6",
         "EMBED_DIM = 32", "NUM_HEADS = 2", "HEAD_DIM = 8", "MLP_DIM = 64"]
RUN = ["TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 8}", "BATCH_SIZE = 32",
       "MIXTURE_OR_TASK_MODULE = 'bench_infer_tasks'"]
TASKS = ("demo_last_word", "demo_pretrain", "bench_class")
LENGTHS = {"inputs": 32, "targets": 8}

# The class task, also written as a module for the pt-infer processes.
TASK_MODULE = '''
import random
import seqio
import tensorflow as tf
from prompt_tuning.tasks import demo, labels

def _examples():
  rng = random.Random("bench_class")
  for _ in range(512):
    words = rng.sample(demo.WORDS, rng.choice([3, 4]))
    yield " ".join(words), "z" if len(words) == 4 else "x" if words[0] < words[-1] else "y"

def _dataset_fn(split, shuffle_files, seed=None):
  rows = list(_examples())
  return tf.data.Dataset.from_tensor_slices({"inputs": [r[0] for r in rows],
                                             "targets": [r[1] for r in rows]})

if "bench_class" not in seqio.TaskRegistry.names():
  seqio.TaskRegistry.add(
      "bench_class", source=seqio.FunctionDataSource(_dataset_fn, splits=("validation",)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=demo.OUTPUT_FEATURES, metric_fns=[demo.exact_match])
  labels.register_class_labels("bench_class", ["x", "y", "z"])
'''


def examples(per_task):
  """{task: [input strings]}: the first `per_task` validation inputs of each task."""
  out = {}
  for task in TASKS:
    ds = seqio.get_mixture_or_task(task).get_dataset(LENGTHS, split="validation",
                                                     shuffle=False)
    out[task] = [e["inputs_pretokenized"].decode() for e in ds.take(per_task).as_numpy_iterator()]
  return out


def setup(root):
  """(frozen checkpoint, {task: prompt path}) under root."""
  model = configurables.build_model(FILES, MODEL)
  params = weights.init_random(model, jax.random.PRNGKey(0),
                                    weights.dummy_batch(1, 8, 4))
  frozen = trees.split(params, ["encoder/prompt/.*"])[1]
  ckpt = t5x_checkpoints.save_checkpoint(str(root / "frozen"), jax.device_get(frozen), 0)
  prompt_files = {}
  for i, task in enumerate(TASKS):
    prompt_files[task] = str(root / f"{task}.npy")
    np.save(prompt_files[task], np.random.RandomState(i).uniform(-0.5, 0.5, (6, 32)).astype("f4"))
  return ckpt, prompt_files


def interleave(inputs):
  lines = []
  for i in range(max(map(len, inputs.values()))):
    lines.extend({"task": t, "inputs": rows[i]} for t, rows in inputs.items() if i < len(rows))
  return lines


def warm_mode(ckpt, prompt_files, inputs, repeats=3):
  model = configurables.build_model(FILES, MODEL)
  mesh = partitioning.make_mesh()
  batch = weights.dummy_batch(1, 8, 4)
  abstract = weights.abstract_trainable(model, ["encoder/prompt/.*"])
  infer_model, table = predict.load_prompts(model, abstract, prompt_files)
  frozen = weights.load_frozen(model, ckpt, batch, ["encoder/prompt/.*"], mesh)
  predictor = predict.Predictor(infer_model, frozen, table, LENGTHS, 32, mesh)
  mixed = interleave(inputs)
  grouped = {t: [{"task": t, "inputs": x} for x in rows] for t, rows in inputs.items()}
  predictor.predict(mixed)  # compiles
  times = {"mixed": [], "by_task": []}
  for _ in range(repeats):
    start = time.time()
    mixed_out = predictor.predict(mixed)
    times["mixed"].append(time.time() - start)
    start = time.time()
    by_task = {t: predictor.predict(rows) for t, rows in grouped.items()}
    times["by_task"].append(time.time() - start)
  position = {t: 0 for t in inputs}
  for out in mixed_out:  # the same predictions either way
    want = by_task[out["task"]][position[out["task"]]]
    position[out["task"]] += 1
    assert out["prediction"] == want["prediction"], (out, want)
  return np.median(times["mixed"]), np.median(times["by_task"])


def _pt_infer(root, ckpt, prompt_files, lines, name):
  path = root / f"{name}.jsonl"
  path.write_text("".join(json.dumps(l) + "\n" for l in lines))
  args = ["--gin_file=" + f for f in FILES + ["runs/prompt_infer.gin"]] + [
      "--gin." + b.split("=", 1)[0].strip() + "=" + b.split("=", 1)[1].strip()
      for b in MODEL + RUN + [f"CHECKPOINT_PATH = '{ckpt}'"]] + [
          f"--input={path}", f"--output={root / (name + '.out.jsonl')}",
          "--prompts=" + ",".join(f"{t}={p}" for t, p in prompt_files.items()
                                  if any(l["task"] == t for l in lines))]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
  start = time.time()
  result = subprocess.run([sys.executable, "-m", "prompt_tuning.infer", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, check=False)
  if result.returncode:
    raise SystemExit(result.stderr[-3000:])
  return time.time() - start


def cli_mode(root, ckpt, prompt_files, inputs):
  mixed_s = _pt_infer(root, ckpt, prompt_files, interleave(inputs), "mixed")
  by_task_s = sum(_pt_infer(root, ckpt, prompt_files,
                            [{"task": t, "inputs": x} for x in rows], t)
                  for t, rows in inputs.items())
  return mixed_s, by_task_s


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--per_task", default="20,256",
                      help="examples per task, comma-separated for several runs")
  parser.add_argument("--mode", choices=("cli", "warm", "both"), default="both")
  args = parser.parse_args(argv)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    (root / "bench_infer_tasks.py").write_text(TASK_MODULE)
    sys.path.insert(0, str(root))
    __import__("bench_infer_tasks")
    ckpt, prompt_files = setup(root)
    for per_task in [int(n) for n in args.per_task.split(",")]:
      inputs = examples(per_task)
      count = sum(map(len, inputs.values()))
      for mode in ("warm", "cli") if args.mode == "both" else (args.mode,):
        if mode == "warm":
          mixed_s, by_task_s = warm_mode(ckpt, prompt_files, inputs)
        else:
          mixed_s, by_task_s = cli_mode(root, ckpt, prompt_files, inputs)
        rows.append({"mode": mode, "per_task": per_task, "examples": count,
                     "mixed_s": round(float(mixed_s), 3), "by_task_s": round(float(by_task_s), 3),
                     "mixed_examples_per_s": round(count / mixed_s, 1),
                     "by_task_examples_per_s": round(count / by_task_s, 1)})
        print(json.dumps(rows[-1]), flush=True)
  return rows


if __name__ == "__main__":
  main()
