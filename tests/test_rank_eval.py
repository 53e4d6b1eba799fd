"""pt-eval on the SuperGLUE mixture from a local SuperGLUE folder, with the real
tiny T5X checkpoint and T5's vocabulary: rank classification, per-label
scores, every task's metrics and the SuperGLUE average."""
import json
import shutil

import numpy as np
import pytest

from conftest import shared_path
import helpers  # pylint: disable=g-bad-import-order

TASKS = ["BoolQ", "CB", "COPA", "MultiRC", "ReCoRD", "RTE", "WiC", "WSC"]
TINY_CKPT_FLAGS = helpers.tiny_ckpt_flags(
    "PROMPT_LENGTH = 5", "BATCH_SIZE = 16",
    "MIXTURE_OR_TASK_MODULE = 'prompt_tuning.tasks.super_glue'",
    "TASK_FEATURE_LENGTHS = {'inputs': 512, 'targets': 16}", files=["runs/prompt_eval.gin"])


@pytest.fixture(scope="module")
def mixture_eval(tmp_path_factory):
  fewglue = shared_path("fewglue")
  ckpt = shared_path("t5x_tiny", "checkpoint_3")
  vocab = shared_path("t5_vocab", "spiece.model")
  root = tmp_path_factory.mktemp("sg")
  for task in TASKS:  # FewGLUE's train examples stand in for the validation split
    (root / "data" / task).mkdir(parents=True)
    for split in ("train", "val"):
      shutil.copy(fewglue / task / "train.jsonl", root / "data" / task / f"{split}.jsonl")
  np.save(root / "prompt.npy", np.random.RandomState(0).uniform(-.5, .5, (5, 4)).astype("f4"))
  out = root / "eval"
  result = helpers.run_cli_here("pt-eval", TINY_CKPT_FLAGS + [
      f"--gin.seqio.SentencePieceVocabulary.sentencepiece_model_file='{vocab}'",
      f"--gin.CHECKPOINT_PATH='{ckpt}'", f"--gin.PROMPT_FILE='{root / 'prompt.npy'}'",
      f"--gin.SUPERGLUE_DATA_DIR='{root / 'data'}'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
      "--gin.MIXTURE_OR_TASK_NAME='taskless_super_glue_v102'"])
  assert result.returncode == 0, result.stderr[-3000:]
  return out


def _last(path):
  return json.loads(path.read_text().splitlines()[-1])


def test_mixture_metrics_and_average(mixture_eval):
  summary = _last(mixture_eval / "taskless_super_glue_v102-metrics.jsonl")
  per_task = {}
  for key, value in summary.items():
    if "/" in key:
      task, metric = key.split("/")
      per_task.setdefault(task, {})[metric] = value
  assert set(per_task) == {f"taskless_super_glue_{t}_v102" for t in
                           ["boolq", "cb", "copa", "multirc", "record", "rte", "wic"]} | {
                               "taskless_super_glue_wsc_v102_simple_eval"}
  assert set(per_task["taskless_super_glue_cb_v102"]) == {"accuracy", "mean_3class_f1"}
  assert set(per_task["taskless_super_glue_multirc_v102"]) == {"exact_match", "f1"}
  assert set(per_task["taskless_super_glue_record_v102"]) == {"em", "f1"}
  expected = np.mean([np.mean(list(m.values())) for m in per_task.values()])
  assert summary["average"] == pytest.approx(expected)
  for task, metrics in per_task.items():
    assert _last(mixture_eval / f"{task}-metrics.jsonl")["step"] == 0
    for metric, value in metrics.items():
      assert _last(mixture_eval / f"{task}-metrics.jsonl")[metric] == pytest.approx(value)


@pytest.mark.parametrize("task,labels", [("rte", {"entailment", "not_entailment"}),
                                         ("cb", {"entailment", "contradiction", "neutral"}),
                                         ("boolq", {"True", "False"})])
def test_rank_classification_predicts_argmax_legal_label(mixture_eval, task, labels):
  name = f"taskless_super_glue_{task}_v102"
  rows = [json.loads(l) for l in (mixture_eval / f"{name}-000000.jsonl").read_text().splitlines()]
  scores = [json.loads(l) for l in
            (mixture_eval / f"{name}-000000-label_scores.jsonl").read_text().splitlines()]
  assert len(rows) == len(scores) == 32
  for row, score in zip(rows, sorted(scores, key=lambda s: s["index"])):
    assert set(score["label_scores"]) == labels
    best = max(score["label_scores"], key=score["label_scores"].get)
    assert row["output"] == best == score["prediction"]
    assert all(v < 0 for v in score["label_scores"].values())
