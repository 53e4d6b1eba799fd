"""Times a prompt ensemble in one pt-eval against one pt-eval per prompt.

  python bench/ensemble.py                      # N=5, tiny model, both modes
  python bench/ensemble.py --members 3 --mode warm

On the tiny T5 1.1 of the tests (gin/models/sizes/tiny.gin with EMBED_DIM 32,
vocabulary 384, float32) with random frozen weights written as a T5X
checkpoint, N random [6, 32] prompts (.npy), evaluated on `demo_last_word`
(256 validation examples, greedy decoding), BATCH_SIZE 32:

- `cli`: wall time of one `pt-eval` process with PROMPT_FILES (all N) against
  N `pt-eval` processes with one PROMPT_FILE each, run one after the other
  (interpreter start-up, data pipeline and compilation included, as a user
  runs them);
- `warm`: in one process, after a first untimed pass compiled everything:
  `ensemble.run` against N calls of `seqio_eval.run` (the evaluation pt-eval
  runs) on the same model and seqio Evaluator (metrics and result files of
  every member and the ensemble included);
- `warm_model_only`: the same, the model's part alone: the batched pass and
  the vote (`Ensemble.outputs`) against N single-prompt prediction passes
  (`ModelFns.predict_fn`).

Prints one JSON line per mode: {"mode", "members", "ensemble_s", "separate_s",
"separate_over_ensemble"}. The cli mode also checks that the members' metrics
equal the separate runs'.
"""
import argparse
import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from prompt_tuning import configurables
from prompt_tuning.evaluation import ensemble
from prompt_tuning.evaluation import seqio_eval
from prompt_tuning.evaluation import trained
from prompt_tuning.model import partitioning
from prompt_tuning.model import weights
from prompt_tuning.storage import t5x_checkpoints
from prompt_tuning.storage import trees

REPO = pathlib.Path(__file__).resolve().parents[1]
FILES = ["models/t5_1_1_small_prompt.gin", "models/sizes/tiny.gin"]
BINDINGS = ["NUM_EMBEDDINGS = 384", "ACTIVATION_DTYPE = 'float32'", "PROMPT_LENGTH = 6",
            "EMBED_DIM = 32", "NUM_HEADS = 2", "HEAD_DIM = 8", "MLP_DIM = 64",
            "MIXTURE_OR_TASK_NAME = 'demo_last_word'",
            "MIXTURE_OR_TASK_MODULE = 'prompt_tuning.tasks.demo'",
            "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 8}", "BATCH_SIZE = 32"]
MODEL_MACROS = ("NUM_EMBEDDINGS", "ACTIVATION_DTYPE", "PROMPT_LENGTH", "EMBED_DIM", "NUM_HEADS",
                "HEAD_DIM", "MLP_DIM")


def build_model():
  return configurables.build_model(FILES, [b for b in BINDINGS
                                           if b.split("=")[0].strip() in MODEL_MACROS])


def setup(root, members):
  """(frozen checkpoint path, prompt paths) under root."""
  model = build_model()
  params = weights.init_random(model, jax.random.PRNGKey(0),
                                    weights.dummy_batch(1, 8, 4))
  frozen = trees.split(params, ["encoder/prompt/.*"])[1]
  ckpt = t5x_checkpoints.save_checkpoint(str(root / "frozen"), jax.device_get(frozen), 0)
  paths = []
  for i in range(members):
    paths.append(str(root / f"prompt{i}.npy"))
    np.save(paths[-1], np.random.RandomState(i).uniform(-0.5, 0.5, (6, 32)).astype("f4"))
  return ckpt, paths


def _flags(bindings):
  return ["--gin_file=" + f for f in FILES + ["runs/prompt_eval.gin"]] + [
      "--gin." + b.split("=", 1)[0].strip() + "=" + b.split("=", 1)[1].strip() for b in bindings]


def _pt_eval(bindings):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  start = time.time()
  result = subprocess.run([sys.executable, "-m", "prompt_tuning.eval", *_flags(bindings)],
                          cwd=REPO, env=env, capture_output=True, text=True, check=False)
  if result.returncode:
    raise SystemExit(result.stderr[-3000:])
  return time.time() - start


def _last_metrics(path):
  return json.loads(pathlib.Path(path).read_text().splitlines()[-1])


def cli_mode(root, ckpt, paths):
  common = BINDINGS + [f"CHECKPOINT_PATH = '{ckpt}'"]
  ensemble_s = _pt_eval(common + [f"PROMPT_FILES = {paths!r}",
                                  f"EVAL_OUTPUT_DIR = '{root / 'cli_ensemble'}'"])
  separate_s = 0.0
  for i, path in enumerate(paths):
    separate_s += _pt_eval(common + [f"PROMPT_FILE = '{path}'",
                                     f"EVAL_OUTPUT_DIR = '{root / f'cli_single{i}'}'"])
    assert (_last_metrics(root / f"cli_single{i}" / "demo_last_word-metrics.jsonl") ==
            _last_metrics(root / "cli_ensemble" / f"member_{i}" / "demo_last_word-metrics.jsonl"))
  return ensemble_s, separate_s


def warm_mode(root, ckpt, paths):
  import prompt_tuning.tasks.demo  # pylint: disable=g-import-not-at-top,unused-import
  model = build_model()
  mesh = partitioning.make_mesh()
  lengths = {"inputs": 32, "targets": 8}
  batch = weights.dummy_batch(1, 8, 4)
  frozen = weights.load_frozen(model, ckpt, batch, ["encoder/prompt/.*"], mesh)
  abstract = weights.abstract_trainable(model, ["encoder/prompt/.*"])
  members = [ensemble.Member(*trained.load_trainable(abstract, p, None)) for p in paths]
  evaluator = seqio_eval.make_evaluator(model, "demo_last_word", lengths, "validation",
                                        str(root / "warm"), 32, False, mesh)

  def run_ensemble():
    ensemble.run(evaluator, model, members, frozen, 32, mesh)

  def run_separate():
    for m in members:
      seqio_eval.run(evaluator, model, trees.merge(m.params, frozen), m.step, 32,
                     mesh)

  ds = evaluator.cached_model_datasets["demo_last_word"]

  def model_ensemble():  # the batched pass and the vote only
    ensemble.Ensemble(model, members, frozen, 32, mesh, 8, "auto", evaluator).outputs(
        "demo_last_word")

  def model_separate():  # the predictions of each prompt, as pt-eval computes them
    for m in members:
      seqio_eval.ModelFns(model, trees.merge(m.params, frozen), 32, mesh, 8).predict_fn(ds)

  times = {}
  with contextlib.redirect_stdout(io.StringIO()):
    for name, fn in (("ensemble", run_ensemble), ("separate", run_separate),
                     ("model_ensemble", model_ensemble), ("model_separate", model_separate)):
      fn()  # compiles
      start = time.time()
      fn()
      times[name] = time.time() - start
  return times


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--members", type=int, default=5)
  parser.add_argument("--mode", choices=("cli", "warm", "both"), default="both")
  args = parser.parse_args(argv)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    ckpt, paths = setup(root, args.members)
    for mode in ("cli", "warm") if args.mode == "both" else (args.mode,):
      if mode == "cli":
        ensemble_s, separate_s = cli_mode(root, ckpt, paths)
        times = {"ensemble": ensemble_s, "separate": separate_s}
      else:
        times = warm_mode(root, ckpt, paths)
      for prefix in ("", "model_") if mode == "warm" else ("",):
        ensemble_s, separate_s = times[prefix + "ensemble"], times[prefix + "separate"]
        rows.append({"mode": mode + ("_model_only" if prefix else ""), "members": args.members,
                     "ensemble_s": round(ensemble_s, 3), "separate_s": round(separate_s, 3),
                     "separate_over_ensemble": round(separate_s / ensemble_s, 2)})
        print(json.dumps(rows[-1]), flush=True)
  return rows


if __name__ == "__main__":
  main()
