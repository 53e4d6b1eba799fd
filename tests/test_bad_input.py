"""Every bad input to pt-train and pt-eval: one line, the right reason, before
anything is written.

Each case asserts exit status 1, exactly one `prog: error:` line holding the
key words of the reason, no traceback, and MODEL_DIR unchanged (a trained run)
or never created (a fresh one). A few cases run the CLI as a user does (a
subprocess, for the real exit path); the rest run `cli.run` in this process
(helpers.run_cli_in_process), which is the same code without the interpreter
start-up.
"""
import builtins
import errno
import json
import os
import re
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

import helpers  # pylint: disable=g-bad-import-order
from prompt_tuning import cli
from prompt_tuning.model import weights
from prompt_tuning.storage import file_utils
from prompt_tuning.storage import numpy_checkpoints
from prompt_tuning.storage import t5x_checkpoints
from prompt_tuning.storage import trees
from prompt_tuning.tasks import superglue_jsonl

FILES = ["--gin_file=" + f for f in helpers.TINY_FILES]
SUPER_GLUE_RTE = ["--gin.MIXTURE_OR_TASK_NAME='super_glue_rte_v102'",
                  "--gin.MIXTURE_OR_TASK_MODULE='prompt_tuning.tasks.super_glue'"]


def write_frozen_checkpoint(directory):
  """A random tiny frozen model as a T5X checkpoint, drawn with numpy from the
  model's parameter shapes (helpers.write_random_checkpoint's model, without
  compiling its init)."""
  model = helpers.build_model()
  abstract = nn.unbox(weights.abstract_params(model, weights.dummy_batch(1, 8, 4)))
  frozen = trees.split(abstract, ["encoder/prompt/.*"])[1]
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    if getattr(path[-1], "key", None) == "scale":  # layer norms
      return np.ones(leaf.shape, leaf.dtype)
    return (rng.standard_normal(leaf.shape) * 0.05).astype(leaf.dtype)

  params = jax.tree_util.tree_map_with_path(draw, frozen)
  return t5x_checkpoints.save_checkpoint(str(directory), params, 0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished 2-step run on a random frozen checkpoint: (model_dir, checkpoint)."""
  root = tmp_path_factory.mktemp("bad_input")
  ckpt = write_frozen_checkpoint(root / "frozen")
  model_dir = root / "run"
  helpers.train_in_process(model_dir, [f"INITIAL_CHECKPOINT_PATH = '{ckpt}'", "TRAIN_STEPS = 2",
                                       "EVAL_PERIOD = None", "CHECKPOINT_PERIOD = 1"])
  return model_dir, ckpt


def train_args(model_dir, ckpt, *extra):
  bindings = helpers.TINY_BINDINGS + [f"MODEL_DIR = '{model_dir}'",
                                      f"INITIAL_CHECKPOINT_PATH = '{ckpt}'", "TRAIN_STEPS = 4"]
  return FILES + ["--gin_file=runs/prompt_finetune.gin"] + helpers.as_flags(bindings) + list(extra)


def eval_args(model_dir, ckpt, output_dir, *extra):
  bindings = helpers.TINY_BINDINGS + [f"MODEL_DIR = '{model_dir}'", f"CHECKPOINT_PATH = '{ckpt}'",
                                      f"EVAL_OUTPUT_DIR = '{output_dir}'"]
  return FILES + ["--gin_file=runs/prompt_eval.gin"] + helpers.as_flags(bindings) + list(extra)


def one_error_line(status, stderr, prog, *needles):
  assert status == 1, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  lines = [l for l in stderr.splitlines() if l.startswith(f"{prog}: error:")]
  assert len(lines) == 1, stderr[-3000:]
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


def write_file(path, content):
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  return path


# Bad input, by kind: (prog, MODEL_DIR 'trained' or 'fresh', extra flags, key words).
# Flags may use {tmp} (this test's folder); files it needs are made by MAKE_FILES.
CASES = {
    # 1. gin values: an unquoted string is not a gin value.
    "unquoted_string": ("pt-train", "fresh", ["--gin.MIXTURE_OR_TASK_NAME=demo_last_word"],
                        ["MIXTURE_OR_TASK_NAME", "quotes",
                         "--gin.MIXTURE_OR_TASK_NAME=\"'demo_last_word'\""]),
    "unquoted_path": ("pt-train", "trained", ["--gin.MODEL_DIR=/tmp/somewhere"],
                      ["MODEL_DIR", "quotes", "\"'/tmp/somewhere'\""]),
    "unclosed_string": ("pt-train", "trained", ["--gin.MODEL_DIR='/tmp/x"],
                        ["--gin.MODEL_DIR='/tmp/x", "not a valid gin value", "closing '"]),
    "unknown_reference": ("pt-train", "trained", ["--gin.BATCH_SIZE=@nothing()"],
                          ["--gin.BATCH_SIZE=@nothing()", "No configurable"]),
    # 2. numbers.
    "batch_size_0": ("pt-train", "trained", ["--gin.BATCH_SIZE=0"],
                     ["BATCH_SIZE must be a positive integer, got 0"]),
    "batch_size_negative": ("pt-train", "fresh", ["--gin.BATCH_SIZE=-8"],
                            ["BATCH_SIZE must be a positive integer, got -8"]),
    "batch_size_fraction": ("pt-train", "trained", ["--gin.BATCH_SIZE=2.5"],
                            ["BATCH_SIZE must be a positive integer, got 2.5"]),
    "prompt_length_0": ("pt-train", "trained", ["--gin.PROMPT_LENGTH=0"],
                        ["PROMPT_LENGTH must be a positive integer, got 0"]),
    "prompt_length_negative": ("pt-train", "fresh", ["--gin.PROMPT_LENGTH=-2"],
                               ["PROMPT_LENGTH must be a positive integer, got -2"]),
    "checkpoint_period_0": ("pt-train", "fresh", ["--gin.CHECKPOINT_PERIOD=0"],
                            ["CHECKPOINT_PERIOD must be a positive integer, got 0"]),
    "log_period_0": ("pt-train", "fresh", ["--gin.LOG_PERIOD=0"],
                     ["LOG_PERIOD must be a positive integer, got 0"]),
    "eval_period_0": ("pt-train", "fresh", ["--gin.EVAL_PERIOD=0"],
                      ["EVAL_PERIOD must be a positive integer", "None", "got 0"]),
    "train_steps_negative": ("pt-train", "trained", ["--gin.TRAIN_STEPS=-3"],
                             ["TRAIN_STEPS must be an integer >= 0, got -3"]),
    "keep_checkpoints_0": ("pt-train", "fresh", ["--gin.KEEP_CHECKPOINTS=0"],
                           ["KEEP_CHECKPOINTS must be a positive integer", "got 0"]),
    "keep_checkpoints_negative": ("pt-train", "trained", ["--gin.KEEP_CHECKPOINTS=-1"],
                                  ["KEEP_CHECKPOINTS must be a positive integer", "got -1"]),
    "random_seed_string": ("pt-train", "fresh", ["--gin.RANDOM_SEED='abc'"],
                           ["RANDOM_SEED must be an integer, got 'abc'"]),
    "feature_lengths_missing_key": ("pt-train", "fresh",
                                    ["--gin.TASK_FEATURE_LENGTHS={'inputs': 32}"],
                                    ["TASK_FEATURE_LENGTHS lacks 'targets'"]),
    "feature_length_0": ("pt-train", "fresh",
                         ["--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 8}"],
                         ["TASK_FEATURE_LENGTHS['inputs'] must be a positive integer, got 0"]),
    # Bindings no configurable reads, lower case included (gin takes any
    # dotless name as a macro: --gin.train_steps=10 would train TRAIN_STEPS).
    "lowercase_unused_macro": ("pt-train", "fresh", ["--gin.train_steps=10"],
                               ["--gin.train_steps: no config uses the macro train_steps",
                                "did you mean TRAIN_STEPS?"]),
    "learning_rate_0": ("pt-train", "fresh", ["--gin.optimizers.adafactor.learning_rate=0"],
                        ["optimizers.adafactor.learning_rate must be a finite number > 0, "
                         "got 0"]),
    "learning_rate_negative": ("pt-train", "trained",
                               ["--gin.optimizers.adafactor.learning_rate=-0.3"],
                               ["learning_rate must be a finite number > 0, got -0.3"]),
    "learning_rate_infinite": ("pt-train", "fresh",
                               ["--gin.optimizers.adafactor.learning_rate=1e999"],
                               ["learning_rate must be a finite number > 0, got inf"]),
    "trainable_params_bad_regex": ("pt-train", "fresh", ["--gin.TRAINABLE_PARAMS=['enc(']"],
                                   ["TRAINABLE_PARAMS: 'enc(' is not a regular expression"]),
    "trainable_params_bad_regex_eval": ("pt-eval", "trained", ["--gin.TRAINABLE_PARAMS=['[a']"],
                                        ["TRAINABLE_PARAMS: '[a' is not a regular expression"]),
    "gin_import_missing_module": ("pt-train", "fresh", ["--gin_file={tmp}/imports.gin"],
                                  ["imports no_such_module_for_pt", "cannot be imported"]),
    "use_cached_tasks_without_cache": ("pt-train", "fresh", ["--gin.USE_CACHED_TASKS=True"],
                                       ["USE_CACHED_TASKS is True but task 'demo_last_word' "
                                        "has no seqio cache", "USE_CACHED_TASKS=False"]),
    "data_shards_0": ("pt-train", "fresh", ["--gin.DATA_SHARDS=0"],
                      ["DATA_SHARDS must be a positive integer, or None for one per host"]),
    "batch_not_a_multiple_of_data_shards": ("pt-train", "fresh", ["--gin.DATA_SHARDS=3"],
                                            ["BATCH_SIZE 8 must be a multiple of the 3 input "
                                             "shards (DATA_SHARDS)"]),
    "num_partitions_0": ("pt-train", "fresh", ["--gin.NUM_PARTITIONS=0"],
                         ["NUM_PARTITIONS must be a positive integer, got 0"]),
    "num_partitions_not_dividing": ("pt-train", "fresh", ["--gin.NUM_PARTITIONS=7"],
                                    ["NUM_PARTITIONS 7 does not divide"]),
    "eval_decoding": ("pt-train", "fresh", ["--gin.EVAL_DECODING='beam'"],
                      ["EVAL_DECODING must be one of", "'rank'", "got 'beam'"]),
    "remat_policy": ("pt-train", "fresh", ["--gin.REMAT_POLICY='full'"],
                     ["REMAT_POLICY must be one of", "'matmuls'", "got 'full'"]),
    # Parameters of the jobs themselves: a misspelt one (accepted by gin as an
    # old-style data binding) and a data config that is not one.
    "unknown_train_parameter": ("pt-train", "trained", ["--gin_bindings=train.batch_szie = 8"],
                                ["train has no parameter 'batch_szie'",
                                 "did you mean train.batch_size?"]),
    "data_config_not_a_config": ("pt-train", "fresh", ["--gin_bindings=train.data_config = 3"],
                                 ["train.data_config must be @data.DataConfig()", "got 3"]),
    "unknown_eval_parameter": ("pt-eval", "trained", ["--gin_bindings=evaluate.splt = 'x'"],
                               ["evaluate has no parameter 'splt'"]),
    "eval_batch_size_0": ("pt-eval", "trained", ["--gin.BATCH_SIZE=0"],
                          ["BATCH_SIZE must be a positive integer, got 0"]),
    # 3. the evaluation split.
    "train_without_eval_split": ("pt-train", "fresh",
                                 ["--gin.MIXTURE_OR_TASK_NAME='train_only_task'",
                                  "--gin.MIXTURE_OR_TASK_MODULE='fixture_tasks'"],
                                 ["train.eval_split 'validation' is not a split of "
                                  "train_only_task", "EVAL_PERIOD=None"]),
    "eval_split_misspelled": ("pt-eval", "trained", ["--gin.EVAL_SPLIT='valdation'"],
                              ["EVAL_SPLIT 'valdation' is not a split of demo_last_word",
                               "validation"]),
    "eval_without_metrics": ("pt-eval", "trained",
                             ["--gin.MIXTURE_OR_TASK_NAME='empty_task'",
                              "--gin.MIXTURE_OR_TASK_MODULE='fixture_tasks'"],
                             ["nothing to evaluate", "empty_task", "metrics"]),
    # 6. prompt files.
    "prompt_of_another_size": ("pt-train", "fresh", ["--gin.PROMPT_FILE='{tmp}/p16.npy'"],
                               ["embedding size 16", "EMBED_DIM is 32", "[6, 16]",
                                "another model size"]),
    "eval_prompt_of_another_size": ("pt-eval", "trained", ["--gin.PROMPT_FILE='{tmp}/p16.npy'"],
                                    ["embedding size 16", "EMBED_DIM is 32"]),
    "eval_checkpoint_of_another_size": ("pt-eval", "trained", ["--gin.EMBED_DIM=16"],
                                        ["encoder/prompt/prompt has embedding size 32",
                                         "EMBED_DIM is 16", "another model size"]),
    "prompt_file_text": ("pt-train", "trained", ["--gin.PROMPT_FILE='{tmp}/prompt.npy'"],
                         ["PROMPT_FILE", "prompt.npy is not a .npy file", "numpy.save"]),
    "eval_prompt_file_text": ("pt-eval", "trained", ["--gin.PROMPT_FILE='{tmp}/prompt.txt'"],
                              ["prompt.txt is not a .npy file"]),
    "prompt_file_missing": ("pt-train", "fresh", ["--gin.PROMPT_FILE='{tmp}/nope.npy'"],
                            ["PROMPT_FILE", "nope.npy does not exist"]),
    "eval_prompt_file_missing": ("pt-eval", "trained", ["--gin.PROMPT_FILE='{tmp}/nope'"],
                                 ["PROMPT_FILE", "nope does not exist"]),
    # 7. a model of another size than its checkpoint.
    "model_of_another_size": ("pt-train", "trained", ["--gin.EMBED_DIM=16"],
                              ["does not match the model", "parameters differ",
                               "token_embedder/embedding has shape [384, 32], model expects "
                               "[384, 16]", "models/*.gin"]),
    # 8. folders that are files.
    "model_dir_is_a_file": ("pt-train", "file", [],
                            ["MODEL_DIR", "is a file, not a folder"]),
    "model_dir_under_a_file": ("pt-train", "under_file", [],
                               ["MODEL_DIR", "cannot be created", "is a file"]),
    "eval_output_dir_is_a_file": ("pt-eval", "trained", ["--gin.EVAL_OUTPUT_DIR='{tmp}/p16.npy'"],
                                  ["EVAL_OUTPUT_DIR", "is a file, not a folder"]),
}


def make_files(tmp):
  np.save(tmp / "p16.npy", np.zeros((6, 16), np.float32))
  write_file(tmp / "prompt.npy", "0.1 0.2 0.3\n")
  write_file(tmp / "prompt.txt", "0.1 0.2 0.3\n")
  write_file(tmp / "a_file", "not a folder\n")
  write_file(tmp / "imports.gin", "import no_such_module_for_pt\n")


def run_case(prog, where, flags, trained, tmp):
  """(status, stderr, model_dir, snapshot before or None) of one in-process run."""
  model_dir, ckpt = trained
  if where == "file":
    model_dir = tmp / "a_file"
  elif where == "under_file":
    model_dir = tmp / "a_file" / "run"
  elif where == "fresh":
    model_dir = tmp / "run"
  before = helpers.snapshot(model_dir) if model_dir.is_dir() else None
  flags = [f.replace("{tmp}", str(tmp)) for f in flags]
  if prog == "pt-train":
    args = train_args(model_dir, ckpt, *flags)
  else:
    args = eval_args(model_dir, ckpt, tmp / "eval", *flags)
  status, err = helpers.run_cli_in_process(prog, args)
  return status, err, model_dir, before


def assert_untouched(model_dir, before, tmp):
  if before is not None:
    assert helpers.snapshot(model_dir) == before
  elif model_dir.name == "a_file":
    assert model_dir.read_text() == "not a folder\n"
  else:
    assert not model_dir.exists()
  assert not (tmp / "eval").exists()  # pt-eval's EVAL_OUTPUT_DIR


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_in_process(case, trained, tmp_path):
  prog, where, flags, needles = CASES[case]
  make_files(tmp_path)
  status, err, model_dir, before = run_case(prog, where, flags, trained, tmp_path)
  line = one_error_line(status, err, prog, *needles)
  # Short, apart from the paths it names (pytest's folders vary in length).
  assert len(re.sub(r"/\S*pytest-of-[^/]+/\S*", "PATH", line)) < 400, line
  assert_untouched(model_dir, before, tmp_path)


# --- As a user runs them: the real exit path (subprocesses) ----------------------


@pytest.mark.parametrize("prog,where,flags,needles", [
    ("pt-train", "fresh", ["--gin.BATCH_SIZE=(("],
     ["gin config error", "--gin.BATCH_SIZE=((", "not a valid gin value", "not closed"]),
    ("pt-eval", "trained", ["--gin.EVAL_SPLIT='valdation'"],
     ["EVAL_SPLIT 'valdation' is not a split of demo_last_word"]),
    # TensorFlow is loaded by now: its C++ start-up and warning lines must not show.
    ("pt-train", "fresh", ["--gin.USE_CACHED_TASKS=True"], ["has no seqio cache"]),
    # absl's own errors: an unknown flag, a stray argument.
    ("pt-eval", "trained", ["--no_such_flag=1"], ["unrecognized arguments: --no_such_flag"]),
    ("pt-train", "fresh", ["stray"], ["unexpected arguments: stray"]),
])
def test_bad_input_from_the_command_line(prog, where, flags, needles, trained, tmp_path):
  """As a user runs them (no TF_CPP_MIN_LOG_LEVEL of their own): the WHOLE
  stderr is the one error line."""
  model_dir, ckpt = trained
  if where == "fresh":
    model_dir = tmp_path / "run"
  before = helpers.snapshot(model_dir) if model_dir.is_dir() else None
  if prog == "pt-train":
    args = train_args(model_dir, ckpt, *flags)
  else:
    args = eval_args(model_dir, ckpt, tmp_path / "eval", *flags)
  result = helpers.run_cli(prog, args, as_user=True)
  line = one_error_line(result.returncode, result.stderr, prog, *needles)
  assert result.stderr == line + "\n", result.stderr[-3000:]
  assert_untouched(model_dir, before, tmp_path)


# --- Vocabulary and SuperGLUE files (real fixtures in ../shared/data) -------------


def vocabulary_flag(path):
  return f"--gin.seqio.SentencePieceVocabulary.sentencepiece_model_file='{path}'"


def superglue_release(tmp, fewglue_dir, last_line):
  """A SuperGLUE folder with 3 real RTE records and `last_line` after them."""
  (tmp / "sg" / "RTE").mkdir(parents=True)
  lines = (fewglue_dir / "RTE" / "train.jsonl").read_text().splitlines()[:3] + [last_line]
  write_file(tmp / "sg" / "RTE" / "train.jsonl", "\n".join(lines) + "\n")
  return tmp / "sg"


@pytest.mark.parametrize("case", ["missing", "not_sentencepiece", "unreachable"])
def test_bad_vocabulary(case, trained, tmp_path):
  make_files(tmp_path)
  path = {"missing": tmp_path / "nope.model", "not_sentencepiece": tmp_path / "prompt.txt",
          # A bucket nobody has: unreadable offline and online alike.
          "unreachable": "gs://pt-bad-input-no-such-bucket/sentencepiece.model"}[case]
  needles = {"missing": ["does not exist"], "not_sentencepiece": ["is not a SentencePiece model"],
             "unreachable": ["could not be read", "local copy"]}[case]
  for prog in ("pt-train", "pt-eval"):
    # The vocabulary is checked before any data is read: no SuperGLUE files needed.
    flags = SUPER_GLUE_RTE + [f"--gin.SUPERGLUE_DATA_DIR='{tmp_path}'", vocabulary_flag(path)]
    status, err, model_dir, before = run_case(prog, "trained", flags, trained, tmp_path)
    one_error_line(status, err, prog, f"VOCABULARY file {path}", *needles,
                   "--gin.seqio.SentencePieceVocabulary.sentencepiece_model_file=")
    assert_untouched(model_dir, before, tmp_path)


def test_missing_eval_split_file(trained, tmp_path, fewglue_dir, t5_vocab_path):
  """FewGLUE has RTE/train.jsonl only: evaluation cannot read RTE/val.jsonl."""
  flags = SUPER_GLUE_RTE + [f"--gin.SUPERGLUE_DATA_DIR='{fewglue_dir}'",
                            vocabulary_flag(t5_vocab_path)]
  for prog, where in (("pt-train", "fresh"), ("pt-eval", "trained")):
    status, err, model_dir, before = run_case(prog, where, flags, trained, tmp_path)
    one_error_line(status, err, prog, "cannot read split 'validation' of "
                   "'super_glue_rte_v102'", f"{fewglue_dir}/RTE/val.jsonl not found")
    assert_untouched(model_dir, before, tmp_path)


@pytest.mark.parametrize("last_line,needles", [
    ('{"premise": "x", "idx": 7, "label": "entailment"}',
     ["train.jsonl line 4", "lacks the field 'hypothesis'"]),
    ('{"premise": "x", "hypo', ["train.jsonl line 4 is not valid JSON"]),
])
def test_bad_superglue_record(last_line, needles, trained, tmp_path, fewglue_dir, t5_vocab_path):
  release = superglue_release(tmp_path, fewglue_dir, last_line)
  flags = SUPER_GLUE_RTE + [f"--gin.SUPERGLUE_DATA_DIR='{release}'",
                            vocabulary_flag(t5_vocab_path)]
  status, err, model_dir, before = run_case("pt-train", "trained", flags, trained, tmp_path)
  one_error_line(status, err, "pt-train", "cannot read split 'train'", str(release), *needles)
  assert_untouched(model_dir, before, tmp_path)


@pytest.mark.parametrize("config,row,needles", [
    ("rte", "{", ["line 2 is not valid JSON"]),
    ("rte", '{"premise": "p", "idx": 0}', ["line 2", "RTE record lacks the field 'hypothesis'"]),
    ("rte", '{"premise": "p", "hypothesis": "h", "idx": 0, "label": "maybe"}',
     ["line 2", "not a valid RTE record", "'maybe'"]),
    ("multirc", '{"idx": 0, "passage": {"text": "t", "questions": [{"question": "q"}]}}',
     ["line 2", "MultiRC record lacks the field 'answers'"]),
    ("rte", "[1, 2]", ["line 2", "not a valid RTE record", "list"]),
])
def test_superglue_reader_names_file_line_and_field(config, row, needles, tmp_path):
  path = write_file(tmp_path / "x.jsonl", "\n" + row + "\n")
  with pytest.raises(superglue_jsonl.RecordError) as e:
    superglue_jsonl.read_examples(str(path), config)
  for needle in [str(path)] + needles:
    assert needle in str(e.value)


# --- A full disk while training ----------------------------------------------------


def test_full_disk_is_one_line_and_the_last_checkpoint_stays(trained, tmp_path, monkeypatch):
  """ENOSPC while writing checkpoint 3 of a resumed run: one line saying the disk
  is full and where; checkpoint 2 intact, no partial checkpoint, lock released."""
  model_dir, ckpt = trained
  run = tmp_path / "run"
  shutil.copytree(model_dir, run)
  checkpoint_2 = helpers.snapshot(numpy_checkpoints.checkpoint_dir(str(run), 2))

  def full_disk_open(path, mode="r", *args, **kwargs):
    f = builtins.open(path, mode, *args, **kwargs)
    if "w" in mode and "checkpoint_3" in str(path):
      f.close()
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return f

  monkeypatch.setattr(file_utils, "open", full_disk_open, raising=False)
  status, err = helpers.run_cli_in_process("pt-train", train_args(
      run, ckpt, "--gin.TRAIN_STEPS=3", "--gin.EVAL_PERIOD=None", "--gin.CHECKPOINT_PERIOD=1"))
  one_error_line(status, err, "pt-train", "disk full", "no space left",
                 f"{run}/numpy_checkpoints/checkpoint_3",
                 "checkpoints up to step 2 are intact", "rerun")
  assert numpy_checkpoints.steps(str(run)) == [0, 1, 2]
  assert helpers.snapshot(numpy_checkpoints.checkpoint_dir(str(run), 2)) == checkpoint_2
  assert not [p for p in os.listdir(run / "numpy_checkpoints") if ".tmp-" in p]
  assert not (run / "pt-train.lock").exists()
  assert json.loads((run / "run.json").read_text())["resumes"]


def test_full_disk_in_pt_eval_is_one_line(trained, tmp_path, monkeypatch):
  """seqio's loggers write through TensorFlow, whose full-disk error is its
  own type (ResourceExhaustedError), not an OSError: still one line."""
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model_dir, ckpt = trained

  def full(*args, **kwargs):
    del args, kwargs
    raise tf.errors.ResourceExhaustedError(
        None, None, f"{tmp_path}/eval/demo_last_word-metrics.jsonl; No space left on device")

  monkeypatch.setattr(seqio.JSONLogger, "__call__", full)
  status, err = helpers.run_cli_in_process("pt-eval", eval_args(model_dir, ckpt, tmp_path / "eval"))
  one_error_line(status, err, "pt-eval", "disk full: ", "No space left on device")


def test_os_error_message():
  assert cli.os_error_message(OSError(errno.ENOSPC, "No space left on device", "/d/f")) == (
      "disk full: [Errno 28] No space left on device: '/d/f'")
  assert cli.os_error_message(PermissionError(errno.EACCES, "Permission denied", "/d")) == (
      "[Errno 13] Permission denied: '/d'")
