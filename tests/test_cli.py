"""pt-train / pt-eval as a user runs them: results on disk, and one clear
error line for each kind of bad input, leaving MODEL_DIR untouched."""
import json
import re

import numpy as np
import pytest

import helpers  # pylint: disable=g-bad-import-order

FILES = ["--gin_file=" + f for f in helpers.TINY_FILES]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, frozen_ckpt):
  """A finished 2-step run on a random frozen checkpoint: (model_dir, checkpoint)."""
  root = tmp_path_factory.mktemp("cli")
  ckpt = frozen_ckpt
  model_dir = root / "run"
  helpers.train_in_process(model_dir, [f"INITIAL_CHECKPOINT_PATH = '{ckpt}'", "TRAIN_STEPS = 2",
                                       "EVAL_PERIOD = None", "CHECKPOINT_PERIOD = 1"])
  return model_dir, ckpt


def train_args(model_dir, ckpt, *extra):
  bindings = helpers.TINY_BINDINGS + [f"MODEL_DIR = '{model_dir}'",
                                      f"INITIAL_CHECKPOINT_PATH = '{ckpt}'", "TRAIN_STEPS = 4"]
  return FILES + ["--gin_file=runs/prompt_finetune.gin"] + helpers.as_flags(bindings) + list(extra)


def assert_one_line_error(result, prog, *needles):
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith(f"{prog}: error:")]
  assert len(lines) == 1, result.stderr[-3000:]
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


def test_pt_eval_writes_seqio_results(trained, tmp_path):
  model_dir, ckpt = trained
  bindings = helpers.TINY_BINDINGS + [f"MODEL_DIR = '{model_dir}'", f"CHECKPOINT_PATH = '{ckpt}'",
                                      f"EVAL_OUTPUT_DIR = '{tmp_path}'"]
  result = helpers.run_cli("pt-eval", FILES + ["--gin_file=runs/prompt_eval.gin"]
                           + helpers.as_flags(bindings))
  assert result.returncode == 0, result.stderr[-3000:]
  # Quiet by default: no absl or TensorFlow log line (seqio's advice that does
  # not apply here included), only the command's own output.
  logs = [l for l in result.stderr.splitlines()
          if re.match(r"[IWEF]\d{4} ", l) or "oneDNN" in l or "absl::InitializeLog" in l]
  assert logs == [], result.stderr[-3000:]
  metrics = [json.loads(l) for l in
             (tmp_path / "demo_last_word-metrics.jsonl").read_text().splitlines()]
  assert metrics[-1]["step"] == 2 and 0 <= metrics[-1]["accuracy"] <= 100
  rows = [json.loads(l) for l in
          (tmp_path / "demo_last_word-000002.jsonl").read_text().splitlines()]
  assert len(rows) == 256
  assert {"input", "target", "prediction"} <= set(rows[0])


@pytest.mark.parametrize("case", ["missing_checkpoint", "wrong_prompt_shape", "unknown_task",
                                  "unused_macro", "undefined_macro", "empty_dataset",
                                  "missing_model_dir"])
def test_bad_input_one_error_and_model_dir_intact(case, trained, tmp_path):
  model_dir, ckpt = trained
  before = helpers.snapshot(model_dir)
  if case == "missing_checkpoint":
    args = train_args(model_dir, tmp_path / "nope" / "checkpoint_5")
    needles = ["No T5X checkpoint", "nope"]
  elif case == "wrong_prompt_shape":
    np.save(tmp_path / "p.npy", np.zeros((7, 32), np.float32))
    args = train_args(model_dir, ckpt, f"--gin.PROMPT_FILE='{tmp_path / 'p.npy'}'")
    needles = ["PROMPT_FILE", "[7, 32]", "[6, 32]"]
  elif case == "unknown_task":
    args = train_args(model_dir, ckpt, "--gin.MIXTURE_OR_TASK_NAME='no_such_task'")
    needles = ["unknown task or mixture 'no_such_task'"]
  elif case == "unused_macro":
    args = train_args(model_dir, ckpt, "--gin.TRAIN_STEP=3")
    needles = ["TRAIN_STEP", "did you mean", "TRAIN_STEPS"]
  elif case == "undefined_macro":
    (tmp_path / "bad.gin").write_text("train.eval_period = %NOT_DEFINED_ANYWHERE\n")
    args = train_args(model_dir, ckpt, f"--gin_file={tmp_path / 'bad.gin'}")
    needles = ["NOT_DEFINED_ANYWHERE"]
  elif case == "empty_dataset":
    args = train_args(model_dir, ckpt, "--gin.MIXTURE_OR_TASK_NAME='empty_task'",
                      "--gin.MIXTURE_OR_TASK_MODULE='fixture_tasks'")
    needles = ["yields no examples"]
  else:
    args = [a for a in train_args(model_dir, ckpt) if not a.startswith("--gin.MODEL_DIR")]
    needles = ["MODEL_DIR"]
  assert_one_line_error(helpers.run_cli_here("pt-train", args), "pt-train", *needles)
  assert helpers.snapshot(model_dir) == before
