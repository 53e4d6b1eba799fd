"""What the previous release wrote still works: its `config.gin` (the data
settings bound on `train` itself, before DataConfig) parses and trains, and
its `run.json` matches today's bindings of the same run (a resume sees no
change). The files in testdata/release_0.1.0 were written by pt-train of
release 0.1.0 (commit f01b290) on the tiny demo run of helpers.TINY_FILES."""
import json
import pathlib

import gin
import pytest

import helpers
from prompt_tuning import configurables  # pylint: disable=unused-import
from prompt_tuning import data
from prompt_tuning import gin_utils
from prompt_tuning.training import run_record
from prompt_tuning.training import trainer

OLD = pathlib.Path(__file__).resolve().parent / "testdata" / "release_0.1.0"


def test_old_config_gin_parses_and_trains(tmp_path, frozen_ckpt):
  assert "train.batch_size = %BATCH_SIZE" in (OLD / "config.gin").read_text()
  gin.clear_config()
  gin_utils.parse([str(OLD / "config.gin")], [
      f"MODEL_DIR = '{tmp_path}'", f"INITIAL_CHECKPOINT_PATH = '{frozen_ckpt}'",
      "TRAIN_STEPS = 1"])
  try:
    trainer.train()
  finally:
    gin.clear_config()
  assert (tmp_path / "numpy_checkpoints" / "checkpoint_1").is_dir()
  record = json.loads((tmp_path / "run.json").read_text())
  assert record["batch_size"] == 8 and record["mixture_or_task_name"] == "demo_last_word"


def test_old_run_record_has_no_change_against_today_s_run_files():
  old = json.loads((OLD / "run.json").read_text())
  macros = old["macros"]
  gin.clear_config()
  gin_utils.parse(helpers.TINY_FILES + ["methods/lora.gin", "runs/prompt_finetune.gin"], [
      f"{name} = {value!r}" for name, value in macros.items()
      if name in ("MODEL_DIR", "INITIAL_CHECKPOINT_PATH", "TRAIN_STEPS", "CHECKPOINT_PERIOD",
                  "EVAL_PERIOD")] + helpers.TINY_BINDINGS
                  # The old run trained a prompt and LoRA together.
                  + ["t5.Transformer.prompt = @prompts.Prompt()"])
  try:
    today = {"bindings": run_record.bindings()}
  finally:
    gin.clear_config()
  assert "data.DataConfig.batch_size" in today["bindings"]
  assert "trainer.train.batch_size" in old["bindings"]
  meaningful, _ = run_record.changes(old, today)
  assert meaningful == {}
  # ... and a real change is still one.
  today["bindings"]["data.DataConfig.batch_size"] = "16"
  assert run_record.changes(old, today)[0] == {
      "data.DataConfig.batch_size": ("%BATCH_SIZE", "16")}


def test_unknown_parameter_of_a_job_is_an_error_that_names_it():
  with pytest.raises(trainer.TrainError, match=r"train has no parameter 'batch_szie' "
                     r"\(did you mean train.batch_size\?\)"):
    data.config.resolve(None, {"batch_szie": 8}, "train", trainer.TrainError)
  with pytest.raises(trainer.TrainError, match="train.data_config is not set"):
    data.config.resolve(None, {}, "train", trainer.TrainError)
  config = data.config.resolve(data.DataConfig(batch_size=4), {"batch_size": 8}, "train")
  assert config.batch_size == 8  # an old-style binding wins over the data config's
