"""Every parameter-efficient method trains, resumes exactly and evaluates on a
real SuperGLUE task (FewGLUE's RTE examples) with the real tiny T5X checkpoint
and T5's vocabulary, through pt-train and pt-eval as a user runs them."""
import json
import shutil

import numpy as np
import pytest

from conftest import shared_path
import helpers  # pylint: disable=g-bad-import-order

TINY_CKPT = helpers.tiny_ckpt_flags(
    "BATCH_SIZE = 4", "MIXTURE_OR_TASK_MODULE = 'prompt_tuning.tasks.super_glue'",
    "MIXTURE_OR_TASK_NAME = 'taskless_super_glue_rte_v102'",
    "TASK_FEATURE_LENGTHS = {'inputs': 256, 'targets': 4}")
# Small sizes for the 4-dimensional model; the methods' structure is unchanged.
SIZES = {"prompt": ["--gin.PROMPT_LENGTH=3"], "lora": ["--gin.LORA_RANK=2"],
         "prefix": ["--gin.PREFIX_LENGTH=3"], "prefix_peft": ["--gin.PREFIX_LENGTH=3"],
         "mam": ["--gin.PREFIX_LENGTH=3", "--gin.ADAPTER_BOTTLENECK=4"],
         "adapter": ["--gin.ADAPTER_BOTTLENECK=4"]}


@pytest.fixture(scope="module")
def fewglue_rte(tmp_path_factory):
  root = tmp_path_factory.mktemp("sg")
  (root / "RTE").mkdir()
  for split in ("train", "val"):  # FewGLUE's 32 train examples stand in for validation
    shutil.copy(shared_path("fewglue", "RTE", "train.jsonl"), root / "RTE" / f"{split}.jsonl")
  return ["--gin.seqio.SentencePieceVocabulary.sentencepiece_model_file="
          f"'{shared_path('t5_vocab', 'spiece.model')}'",
          f"--gin.SUPERGLUE_DATA_DIR='{root}'"]


@pytest.mark.parametrize("methods,extra", [
    (["lora", "mam", "prompt"], []),
    (["adapter", "prefix"], ["--gin.PREFIX_HIDDEN_DIM=4"]),
    (["prefix_peft"], []),
])
def test_method_on_fewglue_rte(tmp_path, fewglue_rte, methods, extra):
  ckpt = shared_path("t5x_tiny", "checkpoint_3")
  files = [f"--gin_file=methods/{m}.gin" for m in methods]
  extra = sorted({b for m in methods for b in SIZES[m]}) + extra
  model_dir = tmp_path / "run"
  train = (TINY_CKPT + files + ["--gin_file=runs/prompt_finetune.gin"] + extra
           + fewglue_rte + [f"--gin.INITIAL_CHECKPOINT_PATH='{ckpt}'", "--gin.TRAIN_STEPS=4",
                            "--gin.CHECKPOINT_PERIOD=2", "--gin.EVAL_PERIOD=None",
                            f"--gin.MODEL_DIR='{model_dir}'"])
  status, err = helpers.run_cli_in_process("pt-train", train)
  assert status == 0, err[-3000:]
  last = model_dir / "numpy_checkpoints" / "checkpoint_4"
  want = {p.name: np.load(p) for p in last.glob("*.npy")}
  first = model_dir / "numpy_checkpoints" / "checkpoint_0"
  assert any(not np.array_equal(np.load(first / n), v) for n, v in want.items())
  shutil.rmtree(last)  # resume from checkpoint_2: steps 3 and 4 again, exactly
  status, err = helpers.run_cli_in_process("pt-train", train)
  assert status == 0, err[-3000:]
  for name, value in want.items():
    np.testing.assert_array_equal(np.load(last / name), value, err_msg=name)

  out = tmp_path / "eval"
  status, err = helpers.run_cli_in_process("pt-eval", (
      TINY_CKPT + files + ["--gin_file=runs/prompt_eval.gin"] + extra + fewglue_rte
      + [f"--gin.CHECKPOINT_PATH='{ckpt}'", f"--gin.MODEL_DIR='{model_dir}'",
         f"--gin.EVAL_OUTPUT_DIR='{out}'"]))
  assert status == 0, err[-3000:]
  metrics = json.loads((out / "taskless_super_glue_rte_v102-metrics.jsonl")
                       .read_text().splitlines()[-1])
  assert 0.0 <= metrics["accuracy"] <= 100.0 and metrics["step"] == 4
