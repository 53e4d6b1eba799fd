"""Every gs:// path of every command, against a real GCS JSON API server
(fake-gcs-server on 127.0.0.1, reached through STORAGE_EMULATOR_HOST as any
GCS client reaches an emulator): training with a frozen T5X checkpoint and
MODEL_DIR in the bucket, killed and resumed exactly; a second run from
another host refused; damaged objects detected; the server stopped mid-run;
pt-eval, ensembles, pt-infer, pt-neighbors, PEFT export and import, and a
sweep with its report, all reading and writing objects; an unreachable
endpoint gives every command one error line.
"""
import io
import json
import os
import signal
import socket
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest

from prompt_tuning.storage import file_utils
from prompt_tuning.storage import numpy_checkpoints
from prompt_tuning.storage import run_lock

from conftest import shared_path  # pylint: disable=g-bad-import-order
import gcs_emulator  # pylint: disable=g-bad-import-order
import helpers  # pylint: disable=g-bad-import-order
from test_cli import assert_one_line_error  # pylint: disable=g-bad-import-order

GS = f"gs://{gcs_emulator.BUCKET}"
PROMPT = "encoder.prompt.prompt.npy"
# The real tiny T5X checkpoint's model, on the byte-level demo task.
BINDINGS = helpers.RUN_BINDINGS + ["PROMPT_LENGTH = 3"]
TRAINING = ["EVAL_PERIOD = None", "CHECKPOINT_PERIOD = 2", "LOG_PERIOD = 1"]


def train_args(model_dir, ckpt, steps, *extra):
  return helpers.tiny_ckpt_flags(*BINDINGS, *TRAINING, f"MODEL_DIR = '{model_dir}'",
                                 f"INITIAL_CHECKPOINT_PATH = '{ckpt}'", f"TRAIN_STEPS = {steps}",
                                 files=["runs/prompt_finetune.gin"]) + list(extra)


def env(**changes):
  out = {k: v for k, v in os.environ.items() if k not in ("PT_VOCABULARY_PATH",
                                                          "SUPERGLUE_DATA_DIR")}
  out.update(TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(helpers.TESTS), os.environ.get("PYTHONPATH", "")]),
             **changes)
  return out


def start_train(args, **env_changes):
  return subprocess.Popen([sys.executable, "-m", "prompt_tuning.train", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env(**env_changes))


def wait_for_step(process, step):
  lines = []
  for line in process.stdout:
    lines.append(line)
    if line.startswith(f"step {step}/"):
      return
  process.kill()
  raise AssertionError("".join(lines) + process.stderr.read()[-3000:])


def prompt_at(model_dir, step):
  folder = numpy_checkpoints.checkpoint_dir(str(model_dir), step)
  return file_utils.load_npy(os.path.join(folder, PROMPT))


@pytest.fixture(scope="module")
def gs_run(gcs, tmp_path_factory):
  """pt-train on gs:// (frozen checkpoint and MODEL_DIR in the bucket),
  through a second run from another host, a SIGKILL, a damaged checkpoint
  object and the server stopped mid-run, against one uninterrupted local run.
  Returns (gs MODEL_DIR, local MODEL_DIR, gs checkpoint, notes by stage)."""
  tmp = tmp_path_factory.mktemp("gs_run")
  ckpt = gcs_emulator.upload(shared_path("t5x_tiny", "checkpoint_3"), f"{GS}/t5x_tiny/checkpoint_3")
  model_dir, local = f"{GS}/run", tmp / "straight"
  notes = {}
  result = helpers.run_cli_here("pt-train", train_args(local, ckpt, 14))
  assert result.returncode == 0, result.stderr[-3000:]

  # A run, paused at step 3 (alive, holding MODEL_DIR); a second run from
  # another host is refused and changes nothing; then SIGKILL after step 5.
  first = start_train(train_args(model_dir, ckpt, 8))
  try:
    wait_for_step(first, 3)
    first.send_signal(signal.SIGSTOP)
    before = gcs_emulator.objects(model_dir)
    with mock.patch.object(socket, "gethostname", return_value="another-host"):
      notes["second"] = helpers.run_cli_here("pt-train", train_args(model_dir, ckpt, 8))
    notes["untouched"] = gcs_emulator.objects(model_dir) == before
    first.send_signal(signal.SIGCONT)
    wait_for_step(first, 5)
  finally:
    first.kill()
    first.communicate()
  notes["killed_at"] = numpy_checkpoints.steps(model_dir)
  result = helpers.run_cli_here("pt-train", train_args(model_dir, ckpt, 8))
  assert result.returncode == 0, result.stderr[-3000:]
  notes["resumed"] = gcs_emulator.objects(model_dir)

  # A bit flipped in checkpoint_8's prompt object: set aside, resumed from 6.
  path = f"{numpy_checkpoints.checkpoint_dir(model_dir, 8)}/{PROMPT}"
  data = bytearray(file_utils.read_bytes(path))
  data[-1] ^= 0x01
  file_utils.write_bytes_atomic(path, bytes(data))
  notes["flipped"] = helpers.run_cli_here("pt-train", train_args(model_dir, ckpt, 10))
  notes["after_flip"] = gcs_emulator.objects(model_dir)

  # The server stopped mid-run: one error line; the last checkpoint committed
  # before it is intact; with the server back, the same command resumes.
  running = start_train(train_args(model_dir, ckpt, 100000), PT_GCS_MAX_RETRIES="2")
  try:
    wait_for_step(running, 13)  # checkpoint_12 is committed before step 13 runs
    gcs.stop()
    _, stderr = running.communicate(timeout=240)
  finally:
    running.kill()
    gcs.start()
  notes["stopped"] = (running.returncode, stderr)
  notes["committed"] = numpy_checkpoints.latest_intact_step(model_dir, move_aside=False)
  result = helpers.run_cli_here("pt-train", train_args(model_dir, ckpt, 14))
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir, local, ckpt, notes


def test_pt_train_on_gs_resumes_exactly_after_sigkill(gs_run):
  model_dir, local, _, notes = gs_run
  names = set(notes["resumed"])
  assert {"run.json", "config.gin"} <= names
  step8 = "numpy_checkpoints/checkpoint_8/"
  assert {step8 + n for n in (PROMPT, "checksums.json", numpy_checkpoints.STATE_FILE)} <= names
  assert any(n.startswith(step8 + "train_ds-") for n in names)  # the data position
  assert any(n.startswith("train/events.out.tfevents.") for n in names)
  assert run_lock.FILENAME not in names  # released
  assert not any(".tmp-" in n for n in names)  # nothing renamed on gs://
  np.testing.assert_array_equal(np.load(io.BytesIO(notes["resumed"][step8 + PROMPT])),
                                prompt_at(local, 8))
  assert 8 not in notes["killed_at"]


def test_second_run_from_another_host_is_refused(gs_run):
  _, _, _, notes = gs_run
  assert_one_line_error(notes["second"], "pt-train", "in use by another pt-train",
                        "on host ")
  assert notes["untouched"]


def test_damaged_object_is_set_aside_and_the_run_resumes_from_the_one_before(gs_run):
  model_dir, local, _, notes = gs_run
  result = notes["flipped"]
  assert result.returncode == 0, result.stderr[-3000:]
  names = set(notes["after_flip"])
  assert "numpy_checkpoints/damaged_checkpoint_8/checksums.json" in names
  np.testing.assert_array_equal(prompt_at(model_dir, 10), prompt_at(local, 10))


def test_server_stopped_mid_run_then_back_resumes_exactly(gs_run):
  model_dir, local, _, notes = gs_run
  status, stderr = notes["stopped"]
  assert status == 1, stderr[-3000:]
  assert stderr.count("\n") == 1 and stderr.startswith(f"pt-train: error: {GS}: could not "), \
      stderr[-3000:]
  assert notes["committed"] is not None and notes["committed"] >= 12
  np.testing.assert_array_equal(prompt_at(model_dir, notes["committed"]),
                                prompt_at(local, notes["committed"]))
  np.testing.assert_array_equal(prompt_at(model_dir, 14), prompt_at(local, 14))


def eval_args(model_dir, ckpt, out, *bindings):
  return helpers.tiny_ckpt_flags(*BINDINGS, f"MODEL_DIR = '{model_dir}'",
                                 f"CHECKPOINT_PATH = '{ckpt}'", f"EVAL_OUTPUT_DIR = '{out}'",
                                 *bindings, files=["runs/prompt_eval.gin"])


def test_pt_eval_and_ensembles_read_and_write_gs(gs_run, tmp_path):
  model_dir, local, ckpt, _ = gs_run
  result = helpers.run_cli_here("pt-eval", eval_args(model_dir, ckpt, f"{GS}/eval"))
  assert result.returncode == 0, result.stderr[-3000:]
  here = helpers.run_cli_here("pt-eval", eval_args(local, ckpt, tmp_path / "eval"))
  assert here.returncode == 0, here.stderr[-3000:]
  remote = gcs_emulator.objects(f"{GS}/eval")
  metrics = "demo_last_word-metrics.jsonl"
  assert remote[metrics].decode() == (tmp_path / "eval" / metrics).read_text()
  members = [f"{numpy_checkpoints.checkpoint_dir(model_dir, s)}/{PROMPT}" for s in (12, 14)]
  result = helpers.run_cli_here("pt-eval", eval_args(
      "", ckpt, f"{GS}/ensemble", f"PROMPT_FILES = {members!r}"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert any(n.endswith("-metrics.jsonl") for n in file_utils.list_tree(f"{GS}/ensemble"))


def test_infer_neighbors_and_peft_read_and_write_gs(gs_run, tmp_path):
  model_dir, local, ckpt, _ = gs_run
  from prompt_tuning import peft_commands  # pylint: disable=g-import-not-at-top
  # pt-infer: input local, prompt and frozen checkpoint in the bucket, output an object.
  examples = [{"task": "demo_last_word", "inputs": t} for t in ("a b c", "hello world there")]
  (tmp_path / "in.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
  infer = helpers.tiny_ckpt_flags(*BINDINGS, "MIXTURE_OR_TASK_NAME = None",
                                  f"CHECKPOINT_PATH = '{ckpt}'", files=["runs/prompt_infer.gin"])
  for prompts, output in ((numpy_checkpoints.checkpoint_dir(model_dir, 14), f"{GS}/preds.jsonl"),
                          (numpy_checkpoints.checkpoint_dir(str(local), 14),
                           tmp_path / "preds.jsonl")):
    result = helpers.run_cli_here("pt-infer", infer + [
        f"--input={tmp_path / 'in.jsonl'}", f"--output={output}",
        f"--prompts=demo_last_word={prompts}"])
    assert result.returncode == 0, result.stderr[-3000:]
  assert (file_utils.read_bytes(f"{GS}/preds.jsonl").decode()
          == (tmp_path / "preds.jsonl").read_text())

  # pt-neighbors: checkpoint and prompt in the bucket, its tables written there.
  result = subprocess.run(
      [sys.executable, "-m", "prompt_tuning.neighbors", f"--checkpoint={ckpt}",
       f"--prompt={numpy_checkpoints.checkpoint_dir(model_dir, 14)}", "--top_k=2",
       f"--output_dir={GS}/neighbors", f"--vocabulary={shared_path('t5_vocab', 'spiece.model')}"],
      capture_output=True, text=True, env=env(), timeout=300, check=False)
  assert result.returncode == 0 and result.stderr == "", result.stderr[-3000:]
  assert set(file_utils.listdir(f"{GS}/neighbors")) == {"neighbors.jsonl", "neighbors.md"}

  # pt-export-peft from a gs:// MODEL_DIR to the bucket, pt-import-peft back.
  from test_peft_interop import _export_in_process  # pylint: disable=g-import-not-at-top
  status, err = _export_in_process(helpers.tiny_ckpt_flags(
      "PROMPT_LENGTH = 3", f"MODEL_DIR = '{model_dir}'") + [f"--output_dir={GS}/peft"])
  assert status == 0, err
  assert peft_commands.import_main([f"{GS}/peft", f"{GS}/imported"]) == 0
  np.testing.assert_array_equal(file_utils.load_npy(f"{GS}/imported/{PROMPT}"),
                                prompt_at(model_dir, 14))
  assert "checksums.json" in file_utils.listdir(f"{GS}/imported")


def test_sweep_on_gs_skips_finished_points_and_reports_as_on_disk(gcs, tmp_path, capsys):
  from prompt_tuning.sweep import main as sweep  # pylint: disable=g-import-not-at-top
  from prompt_tuning.sweep import report  # pylint: disable=g-import-not-at-top
  ckpt = gcs_emulator.upload(shared_path("t5x_tiny", "checkpoint_3"),
                             f"{GS}/sweep_ckpt/checkpoint_3")
  root = f"{GS}/sweep"
  args = (["--gin_file=" + f for f in (helpers.TINY_CKPT_FILE, "runs/prompt_finetune.gin")]
          + helpers.as_flags(helpers.TINY_CKPT_BINDINGS + helpers.RUN_BINDINGS + [
              f"INITIAL_CHECKPOINT_PATH = '{ckpt}'", "TRAIN_STEPS = 2", "EVAL_PERIOD = None"])
          + ["--sweep=PROMPT_LENGTH=[2, 3]", f"--sweep_dir={root}", "--parallel=2",
             "--noreport"])
  for done, skipped in ((2, 0), (0, 2)):  # in this process; the points run as pt-train does
    try:
      status = sweep.main(["pt-sweep", *args])
    finally:
      sweep.FLAGS.unparse_flags()
    out, err = capsys.readouterr()
    assert status == 0, err[-3000:] + out[-3000:]
    assert f"{done} done, {skipped} skipped (finished), 0 failed" in out
  for point in ("PROMPT_LENGTH=2", "PROMPT_LENGTH=3"):
    assert numpy_checkpoints.steps(f"{root}/{point}") == [0, 2]

  # The same sweep's files on a local disk give the same report.
  gcs_emulator.download(root, tmp_path / "sweep")
  assert report.console_main(["report", root]) == 0
  assert report.console_main(["report", str(tmp_path / "sweep")]) == 0
  capsys.readouterr()
  names = file_utils.list_tree(root)
  for name in (report.CSV_FILE, report.MD_FILE):
    assert name in names
    assert (file_utils.read_bytes(f"{root}/{name}").decode().replace(root, "ROOT")
            == (tmp_path / "sweep" / name).read_text().replace(str(tmp_path / "sweep"), "ROOT"))
  plots = sorted(n for n in names if n.startswith(report.PLOTS_DIR + "/"))
  assert plots and plots == sorted(
      f"{report.PLOTS_DIR}/{n}" for n in os.listdir(tmp_path / "sweep" / report.PLOTS_DIR))


# ------------------------------------------------ an unreachable endpoint

@pytest.fixture
def dead():
  """The environment of an endpoint nothing answers: a port held (bound, never
  listening) for the test, so no server can take it meanwhile."""
  with socket.socket() as held:
    held.bind(("127.0.0.1", 0))
    yield {"STORAGE_EMULATOR_HOST": f"127.0.0.1:{held.getsockname()[1]}",
           "PT_GCS_MAX_RETRIES": "1"}


def test_unreachable_endpoint_is_one_line_for_every_command(tmp_path, monkeypatch, capsys, dead):
  for name, value in dead.items():
    monkeypatch.setenv(name, value)
  ckpt, run = f"{GS}/t5x_tiny/checkpoint_3", f"{GS}/run"
  # The whole stderr of a real command (C++ libraries' lines included), in a
  # user's environment (no TF_CPP_MIN_LOG_LEVEL of their own).
  user = {k: v for k, v in env(**dead).items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  result = subprocess.run([sys.executable, "-m", "prompt_tuning.train",
                           *train_args(run, ckpt, 4)], capture_output=True, text=True,
                          env=user, timeout=300, check=False)
  assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr[-3000:]
  assert result.stderr.startswith(f"pt-train: error: {GS}: could not "), result.stderr
  assert "STORAGE_EMULATOR_HOST" in result.stderr
  np.save(tmp_path / "p.npy", np.zeros((3, 4), np.float32))
  result = subprocess.run(
      [sys.executable, "-m", "prompt_tuning.neighbors", f"--checkpoint={ckpt}",
       f"--prompt={tmp_path / 'p.npy'}", f"--output_dir={GS}/neighbors",
       f"--vocabulary={shared_path('t5_vocab', 'spiece.model')}"],
      capture_output=True, text=True, env=user, timeout=300, check=False)
  assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr[-3000:]
  assert result.stderr.startswith(f"pt-neighbors: error: {GS}: could not "), result.stderr
  (tmp_path / "in.jsonl").write_text('{"task": "demo_last_word", "inputs": "a b"}\n')
  infer = helpers.tiny_ckpt_flags(*BINDINGS, "MIXTURE_OR_TASK_NAME = None",
                                  f"CHECKPOINT_PATH = '{ckpt}'", files=["runs/prompt_infer.gin"])
  for prog, args in (
      ("pt-train", train_args(tmp_path / "run", ckpt, 4)),
      ("pt-eval", eval_args(run, ckpt, tmp_path / "eval")),
      ("pt-infer", infer + [f"--input={tmp_path / 'in.jsonl'}", f"--output={GS}/out.jsonl",
                            f"--prompts=demo_last_word={GS}/p.npy"])):
    assert_one_line_error(helpers.run_cli_here(prog, args), prog, f"{GS}: could not ")
  from prompt_tuning import peft_commands  # pylint: disable=g-import-not-at-top
  from prompt_tuning.sweep import main as sweep  # pylint: disable=g-import-not-at-top
  from prompt_tuning.sweep import report  # pylint: disable=g-import-not-at-top
  from test_peft_interop import _export_in_process  # pylint: disable=g-import-not-at-top
  status, err = _export_in_process(helpers.tiny_ckpt_flags("PROMPT_LENGTH = 3",
                                                           f"MODEL_DIR = '{run}'")
                                   + [f"--output_dir={tmp_path / 'peft'}"])
  assert status == 1 and err.count("\n") == 1 and f"{GS}: could not " in err, err
  capsys.readouterr()
  for status in (
      peft_commands.import_main([f"{GS}/peft", str(tmp_path / "imported")]),
      report.console_main(["report", f"{GS}/sweep"]),
      sweep.main(["pt-sweep", *helpers.tiny_ckpt_flags(
          *BINDINGS, f"INITIAL_CHECKPOINT_PATH = '{ckpt}'", files=["runs/prompt_finetune.gin"]),
                  "--sweep=PROMPT_LENGTH=[2]", f"--sweep_dir={GS}/sweep2", "--launcher=local"])):
    assert status == 1
  sweep.FLAGS.unparse_flags()
  err = capsys.readouterr().err
  lines = err.splitlines()
  assert len(lines) == 3 and all(": error: " in l and f"{GS}: could not " in l
                                 for l in lines), err
  assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "p.npy"]  # nothing written


@pytest.mark.parametrize("name,value", [("PT_GCS_MAX_RETRIES", "abc"), ("PT_GCS_MAX_RETRIES", "0"),
                                        ("PT_GCS_TIMEOUT_S", "-5"), ("PT_GCS_TIMEOUT_S", "inf")])
def test_bad_retry_settings_are_one_line(name, value, monkeypatch):
  monkeypatch.setenv(name, value)
  with pytest.raises(file_utils.StorageError) as raised:
    file_utils.exists(f"{GS}/anything")
  assert str(raised.value) == (f"{name} must be "
                               f"{'an integer' if 'RETRIES' in name else 'a number of seconds'} "
                               f"> 0, got {value!r}")
