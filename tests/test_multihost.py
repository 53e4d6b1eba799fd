"""Multi-host pt-train and pt-eval, for real, on one machine: several CPU
processes joined by `jax.distributed` (gloo collectives), each with its own
host devices, against one process holding all the devices.

The same mesh and global batch must give the same prompt, one set of files
(process 0 writes), logs from process 0 only, and identical evaluation results
with the eval data split between processes and gathered.
"""
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from prompt_tuning.storage import numpy_checkpoints

import gcs_emulator  # pylint: disable=g-bad-import-order
import helpers  # pylint: disable=g-bad-import-order
from test_cli import assert_one_line_error  # pylint: disable=g-bad-import-order

FILES = ["--gin_file=" + f for f in helpers.TINY_FILES]


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(module, args, processes, devices_per_process, timeout=600):
  """Runs `python -m module args` as `processes` jax.distributed processes;
  returns [(returncode, stdout, stderr)] by process id."""
  env = {k: v for k, v in os.environ.items() if k not in ("PT_VOCABULARY_PATH",
                                                           "SUPERGLUE_DATA_DIR")}
  env.update(TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
             XLA_FLAGS=helpers.xla_flags(devices_per_process),
             PYTHONPATH=os.pathsep.join([str(helpers.TESTS), os.environ.get("PYTHONPATH", "")]))
  port = _free_port()
  procs = []
  for i in range(processes):
    extra = ([] if processes == 1 else
             ["--distributed", f"--coordinator_address=localhost:{port}",
              f"--num_processes={processes}", f"--process_id={i}"])
    procs.append(subprocess.Popen([sys.executable, "-m", module, *args, *extra], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  out = []
  try:
    for p in procs:
      stdout, stderr = p.communicate(timeout=timeout)
      out.append((p.returncode, stdout, stderr))
  finally:
    for p in procs:
      p.kill()
  for i, (code, _, stderr) in enumerate(out):
    assert code == 0, f"process {i}:\n{stderr[-4000:]}"
  return out


def train_args(model_dir, ckpt, *bindings):
  return (FILES + ["--gin_file=runs/prompt_finetune.gin"] + helpers.as_flags(
      helpers.TINY_BINDINGS + [f"MODEL_DIR = '{model_dir}'", f"INITIAL_CHECKPOINT_PATH = '{ckpt}'",
                               "DROPOUT_RATE = 0.0", *bindings]))


def eval_args(ckpt, prompt, out_dir):
  return (FILES + ["--gin_file=runs/prompt_eval.gin"] + helpers.as_flags(
      helpers.TINY_BINDINGS + [f"CHECKPOINT_PATH = '{ckpt}'", f"PROMPT_FILE = '{prompt}'",
                               f"EVAL_OUTPUT_DIR = '{out_dir}'", "BATCH_SIZE = 24"]))


def files_of(directory):
  """Relative file names; TensorBoard event files named without their time and pid."""
  return sorted(re.sub(r"events\.out\.tfevents\..*", "events.out.tfevents.*",
                       str(p.relative_to(directory)))
                for p in directory.rglob("*") if p.is_file())


def jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


COMMON = ["TRAIN_STEPS = 4", "EVAL_PERIOD = 2", "CHECKPOINT_PERIOD = 2", "LOG_PERIOD = 1",
          "train.eval_batch_size = 24"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, frozen_ckpt, request):
  """The same 4-step run (eval at steps 2 and 4) as 1 process x 8 devices and
  as 2 processes x 4 devices; the latter with its MODEL_DIR in a bucket of the
  local GCS server (copied to root/two afterwards for the comparisons), or on
  the local disk where that server cannot run."""
  root = tmp_path_factory.mktemp("multihost")
  ckpt = frozen_ckpt
  try:
    request.getfixturevalue("gcs")
    two = f"gs://{gcs_emulator.BUCKET}/multihost-{root.name}"
  except pytest.skip.Exception:
    two = root / "two"
  out = {}
  # The 2-process run reads one input shard per host (T5X's rule); the
  # 1-process run reads the same 2 shards (DATA_SHARDS), so the same batches.
  for name, model_dir, processes, devices, shards in (("one", root / "one", 1, 8, 2),
                                                      ("two", two, 2, 4, None)):
    out[name] = launch("prompt_tuning.train", train_args(model_dir, ckpt, *COMMON, *(
        [f"DATA_SHARDS = {shards}"] if shards else [])), processes, devices)
  if isinstance(two, str):
    gcs_emulator.download(two, root / "two")
  return root, ckpt, out


def test_two_processes_train_the_same_prompt(runs):
  root, _, _ = runs
  for step in (2, 4):
    name = f"numpy_checkpoints/checkpoint_{step}/encoder.prompt.prompt.npy"
    one, two = np.load(root / "one" / name), np.load(root / "two" / name)
    # Float tolerance: gloo sums the 8 shards' gradients in another order.
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-5)
  assert np.abs(np.load(root / "one" / name) - np.load(
      root / "one/numpy_checkpoints/checkpoint_0/encoder.prompt.prompt.npy")).max() > 0


def test_one_set_of_files_written_by_process_0(runs):
  root, _, out = runs
  # Besides each process's data state (T5X's train_ds-{process:03}-of-{count:03} files).
  data = re.compile(r"/train_ds-(\d{3})-of-(\d{3})\.")
  assert ([f for f in files_of(root / "two") if not data.search(f)]
          == [f for f in files_of(root / "one") if not data.search(f)])
  for name, count in (("one", 1), ("two", 2)):
    held = {data.search(f).groups() for f in files_of(root / name) if data.search(f)
            and "checkpoint_4/" in f}
    assert held == {(f"{i:03}", f"{count:03}") for i in range(count)}
  assert len(list((root / "two" / "train").glob("events.out.tfevents.*"))) == 1
  record = json.loads((root / "two" / "run.json").read_text())
  assert (record["process_count"], record["device_count"], record["data_shards"]) == (2, 8, 2)
  assert json.loads((root / "one" / "run.json").read_text())["process_count"] == 1
  # Logs from process 0 only.
  steps_printed = [sum(line.startswith("step ") for line in stdout.splitlines())
                   for _, stdout, _ in out["two"]]
  assert steps_printed == [4, 0]
  evals_printed = [sum(line.startswith("eval step") for line in stdout.splitlines())
                   for _, stdout, _ in out["two"]]
  assert evals_printed[0] > 0 and evals_printed[1] == 0


def test_eval_during_training_is_gathered_and_identical(runs):
  root, _, _ = runs
  one = jsonl(root / "one/inference_eval/demo_last_word-metrics.jsonl")
  two = jsonl(root / "two/inference_eval/demo_last_word-metrics.jsonl")
  assert [m["step"] for m in two] == [2, 4]  # once per evaluation, not once per process
  assert two == one
  # Every validation example predicted exactly once, in order.
  inferences = jsonl(root / "two/inference_eval/demo_last_word-000004.jsonl")
  assert len(inferences) == 256
  assert inferences == jsonl(root / "one/inference_eval/demo_last_word-000004.jsonl")


def test_pt_eval_split_across_processes_matches_one_process(runs):
  root, ckpt, _ = runs
  prompt = root / "one/numpy_checkpoints/checkpoint_4/encoder.prompt.prompt.npy"
  outs = {}
  for name, processes, devices in (("eval_one", 1, 8), ("eval_two", 2, 4)):
    outs[name] = launch("prompt_tuning.eval", eval_args(ckpt, prompt, root / name),
                        processes, devices)
  assert files_of(root / "eval_two") == files_of(root / "eval_one")
  for f in ("demo_last_word-metrics.jsonl", "demo_last_word-000004.jsonl"):
    assert jsonl(root / "eval_two" / f) == jsonl(root / "eval_one" / f)
  assert "eval step" not in outs["eval_two"][1][1]


def test_model_split_across_hosts_reads_the_same_data(tmp_path, frozen_ckpt):
  """NUM_PARTITIONS spanning both processes: one data shard, read by both."""
  ckpt = frozen_ckpt
  for name, processes, devices in (("one", 1, 2), ("two", 2, 1)):
    launch("prompt_tuning.train", train_args(tmp_path / name, ckpt, "TRAIN_STEPS = 2",
                                             "EVAL_PERIOD = None", "NUM_PARTITIONS = 2"),
           processes, devices)
  name = "numpy_checkpoints/checkpoint_2/encoder.prompt.prompt.npy"
  np.testing.assert_allclose(np.load(tmp_path / "two" / name), np.load(tmp_path / "one" / name),
                             rtol=1e-5, atol=1e-5)
  assert json.loads((tmp_path / "two" / "run.json").read_text())["data_shards"] == 1


PROMPT4 = "numpy_checkpoints/checkpoint_4/encoder.prompt.prompt.npy"


def test_two_processes_each_save_and_restore_their_data_state(runs):
  """2 processes x 4 devices: each writes its train_ds file into the checkpoint
  before process 0 checksums and renames it; a resume restores both, exactly
  (the same prompt as the uninterrupted 2-process run of `runs`)."""
  root, ckpt, _ = runs
  killed = root / "killed"
  # Without the evaluations (they change nothing that trains), else as `runs`.
  common = [b for b in COMMON if not b.startswith("EVAL_PERIOD")] + ["EVAL_PERIOD = None"]
  launch("prompt_tuning.train", train_args(killed, ckpt, *common, "train.stop_after_step = 3"),
         2, 4)
  folder = killed / "numpy_checkpoints"
  assert numpy_checkpoints.steps(str(folder.parent)) == [0, 2]
  assert not list(folder.glob("*.tmp-*"))
  listed = json.loads((folder / "checkpoint_2/checksums.json").read_text())["files"]
  assert {f for f in listed if f.startswith("train_ds-")} == {
      f"train_ds-{i:03}-of-002.{ext}" for i in range(2)
      for ext in ("index", "data-00000-of-00001")}
  out = launch("prompt_tuning.train", train_args(killed, ckpt, *common), 2, 4)
  for _, _, stderr in out:  # (a replay is announced with a warning)
    assert "replaying the data stream" not in stderr
  # Same processes and devices as the uninterrupted run: the same prompt, bit for bit.
  np.testing.assert_array_equal(np.load(killed / PROMPT4), np.load(root / "two" / PROMPT4))


@pytest.mark.parametrize("flags,needle", [
    (["--coordinator_address=localhost:1234"], "need --distributed"),
    (["--distributed", "--coordinator_address=localhost:1234", "--num_processes=2"],
     "go together"),
    (["--distributed", "--coordinator_address=localhost:1234", "--num_processes=2",
      "--process_id=2"], "--process_id must be in 0..1"),
])
def test_bad_distributed_flags_are_one_line_errors(tmp_path, flags, needle):
  """Refused before jax.distributed starts (so in this process)."""
  model_dir = tmp_path / "run"
  status, err = helpers.run_cli_in_process(
      "pt-train", train_args(model_dir, tmp_path / "none", "TRAIN_STEPS = 1") + flags)
  assert_one_line_error(subprocess.CompletedProcess([], status, "", err), "pt-train", needle)
  assert not model_dir.exists()


def test_batch_not_divisible_by_data_shards_is_refused(tmp_path, monkeypatch, frozen_ckpt):
  ckpt = frozen_ckpt
  model_dir = tmp_path / "run"
  monkeypatch.setenv("XLA_FLAGS", helpers.xla_flags(8))
  result = helpers.run_cli("pt-train", train_args(model_dir, ckpt, "TRAIN_STEPS = 1",
                                                  "BATCH_SIZE = 12"))
  assert_one_line_error(result, "pt-train", "BATCH_SIZE 12 must be a multiple of the 8 "
                        "data-parallel devices")
  assert not model_dir.exists()


def test_a_task_smaller_than_a_batch_trains_on_8_devices(tmp_path, monkeypatch, frozen_ckpt):
  """4 examples, batch 8, 1 process x 8 devices: one input shard for the host,
  as T5X reads (8 shards, one per device, would leave half of them empty)."""
  monkeypatch.setenv("XLA_FLAGS", helpers.xla_flags(8))
  result = helpers.run_cli("pt-train", train_args(
      tmp_path / "run", frozen_ckpt, "TRAIN_STEPS = 2", "EVAL_PERIOD = None",
      "MIXTURE_OR_TASK_NAME = 'four_examples_task'", "MIXTURE_OR_TASK_MODULE = 'fixture_tasks'"))
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((tmp_path / "run" / "run.json").read_text())
  assert (record["device_count"], record["data_shards"]) == (8, 1)
  assert numpy_checkpoints.steps(str(tmp_path / "run")) == [0, 2]


def test_processes_agree_on_each_batch_bucket():
  """data.fit_batch over 2 processes whose rows need different lengths
  (process 0: 10 inputs, 3 targets; process 1: 40, 5): each alone would cut
  to its own bucket (inputs 12 vs 48; targets 8 both); together both cut to
  the larger, or the global batch could not be assembled."""
  out = launch("fit_batch_worker", [], 2, 1, timeout=120)
  rows = [json.loads(stdout.strip().splitlines()[-1]) for _, stdout, _ in out]
  assert [r["process"] for r in rows] == [0, 1]
  assert rows[0]["local"]["encoder_input_tokens"] == [2, 12]
  assert rows[1]["local"]["encoder_input_tokens"] == [2, 48]
  for row in rows:
    assert row["agreed"]["encoder_input_tokens"] == [2, 48]
    assert row["agreed"]["decoder_target_tokens"] == [2, 8]
  assert rows[0]["agreed"] == rows[1]["agreed"]
