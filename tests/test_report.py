"""pt-sweep report: tables and figures of fake sweeps written with the runner's
own writers (seqio.JSONLogger, summaries.writer, numpy_checkpoints)."""
import csv
import json
import os

import numpy as np
import pytest
import seqio

from prompt_tuning.storage import numpy_checkpoints
from prompt_tuning.sweep import report
from prompt_tuning.training import summaries

TASK = "taskless_super_glue_rte_v102"
GIN_FILES = ("prompts/random_uniform.gin", "prompts/class_labels.gin")
LENGTHS = (1, 5)
SEEDS = (0, 1)
STEPS = (100, 200, 300)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_record(model_dir, train_steps=300, gin_files=(), task=TASK, **macros):
  macros = {"MODEL_DIR": model_dir, "MIXTURE_OR_TASK_NAME": task, "TRAIN_STEPS": train_steps,
            "BATCH_SIZE": 32, "PROMPT_LENGTH": 5, "RANDOM_SEED": 0,
            "EVAL_OUTPUT_DIR": os.path.join(model_dir, "inference_eval"),
            "MODEL": "@models.PromptModel()", **macros}
  record = {"version": 1, "macros": macros,
            "gin_files": ["models/t5_1_1_base_prompt.gin", *gin_files],
            "gin_bindings": [f"PROMPT_LENGTH = {macros['PROMPT_LENGTH']}"],
            "random_seed": macros["RANDOM_SEED"], "package_version": "0.1.0",
            "jax_version": "0.4.30", "platform": "cpu", "device_kind": "cpu",
            "device_count": 8, "process_count": 2, "mixture_or_task_name": task,
            "train_steps": train_steps, "batch_size": 32,
            "start_time": "2026-11-24T10:00:00+00:00"}
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, "run.json"), "w") as f:
    json.dump(record, f)


def write_evals(model_dir, task, lines, subdir=""):
  log_dir = os.path.join(model_dir, "inference_eval", subdir)
  os.makedirs(log_dir, exist_ok=True)  # as evaluation.make_evaluator does
  logger = seqio.JSONLogger(log_dir)
  for step, metrics in lines:
    logger(task_name=task, step=step,
           metrics={k: seqio.metrics.Scalar(v) for k, v in metrics.items()},
           dataset=None, inferences=None, targets=None)


def write_train(model_dir, lines):
  writer = summaries.writer(os.path.join(model_dir, "train"))
  for step, values in lines:
    writer.write_scalars(step, values)
  writer.close()


def write_checkpoints(model_dir, steps):
  for step in steps:
    numpy_checkpoints.save(model_dir, step, {"encoder": {"prompt": {"prompt": np.zeros((2, 4))}}})


def point_name(length, gin_file, seed):
  return f"PROMPT_LENGTH={length},gin_file={gin_file.split('/')[-1][:-4]},RANDOM_SEED={seed}"


def write_manifest(root, points):
  manifest = {"version": 1,
              "axes": [{"name": "PROMPT_LENGTH", "values": list(LENGTHS)},
                       {"name": "gin_file", "values": list(GIN_FILES)},
                       {"name": "RANDOM_SEED", "values": list(SEEDS)}],
              "points": [{"name": point_name(*p), "model_dir": os.path.join(root, point_name(*p)),
                          "values": dict(zip(("PROMPT_LENGTH", "gin_file", "RANDOM_SEED"), p)),
                          "train_steps": 300} for p in points]}
  with open(os.path.join(root, "sweep.json"), "w") as f:
    json.dump(manifest, f)


def all_points():
  return [(l, g, s) for l in LENGTHS for g in GIN_FILES for s in SEEDS]


def write_done_run(root, point, rng):
  """A finished run with random (full-precision) metrics; returns what it wrote."""
  model_dir = os.path.join(root, point_name(*point))
  write_record(model_dir, gin_files=[point[1]], PROMPT_LENGTH=point[0], RANDOM_SEED=point[2])
  evals = [(s, {"accuracy": float(rng.uniform(40, 90)), "loss": float(rng.uniform(0, 2))})
           for s in STEPS]
  write_evals(model_dir, TASK, evals)
  speeds = [float(rng.choice([250.0, 500.0, 1000.0])) for _ in STEPS]
  losses = [float(rng.uniform(0, 3)) for _ in STEPS]
  write_train(model_dir, [(s, {"loss": l, "examples_per_second": e})
                          for s, l, e in zip(STEPS, losses, speeds)])
  write_checkpoints(model_dir, (0,) + STEPS)
  return {"evals": evals, "speeds": speeds, "losses": losses}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  """A finished 2 (PROMPT_LENGTH) x 2 (initialiser) x 2 (seed) sweep."""
  root = str(tmp_path_factory.mktemp("sweep"))
  rng = np.random.default_rng(0)
  points = all_points()
  write_manifest(root, points)
  return root, {p: write_done_run(root, p, rng) for p in points}


def read_csv(root):
  with open(os.path.join(root, "results.csv")) as f:
    return list(csv.DictReader(f))


def by_row(rows, kind):
  return [r for r in rows if r["row"] == kind]


def test_csv_equals_metrics_files(sweep):
  root, written = sweep
  report.write_report(root, plots=False)
  runs = by_row(read_csv(root), "run")
  assert [r["name"] for r in runs] == [point_name(*p) for p in all_points()]
  for row, (point, w) in zip(runs, written.items()):
    assert (int(row["PROMPT_LENGTH"]), row["gin_file"], int(row["RANDOM_SEED"])) == point
    assert row["status"] == "done"
    assert (row["steps_done"], row["train_steps"]) == ("300", "300")
    accuracy = [m["accuracy"] for _, m in w["evals"]]
    loss = [m["loss"] for _, m in w["evals"]]
    metric = f"{TASK}/accuracy"
    assert float(row[f"{metric} final"]) == accuracy[-1]  # exact: no rounding in the CSV
    assert float(row[f"{metric} best"]) == max(accuracy)
    assert int(row[f"{metric} best_step"]) == STEPS[int(np.argmax(accuracy))]
    # A loss-like metric is best at its minimum.
    assert float(row[f"{TASK}/loss best"]) == min(loss)
    assert int(row[f"{TASK}/loss best_step"]) == STEPS[int(np.argmin(loss))]
    assert float(row["examples_per_second"]) == np.mean(w["speeds"][1:])
    assert float(row["train_loss"]) == float(np.float32(w["losses"][-1]))  # tf.summary: float32


def test_aggregates_equal_numpy(sweep):
  root, written = sweep
  report.write_report(root, plots=False)
  rows = read_csv(root)
  column = f"{TASK}/accuracy final"
  for length in LENGTHS:
    for gin_file in GIN_FILES:
      values = [written[(length, gin_file, s)]["evals"][-1][1]["accuracy"] for s in SEEDS]
      stats = {r["row"]: r for r in rows if r["row"] != "run" and
               (r["PROMPT_LENGTH"], r["gin_file"]) == (str(length), gin_file)}
      assert set(stats) == {"mean", "std", "n"}
      assert stats["mean"]["RANDOM_SEED"] == ""
      assert float(stats["mean"][column]) == np.mean(values)
      assert float(stats["std"][column]) == np.std(values, ddof=1)
      assert stats["n"][column] == "2"


def test_collect_rows(sweep):
  root, written = sweep
  rows = report.collect(root)
  assert len(rows) == 8
  first = written[all_points()[0]]
  assert rows[0][f"{TASK}/accuracy final"] == first["evals"][-1][1]["accuracy"]
  assert rows[0]["start_time"] == "2026-11-24T10:00:00+00:00"


def test_partial_sweep_missing_not_zero(tmp_path, capsys):
  root = str(tmp_path)
  rng = np.random.default_rng(1)
  points = all_points()[:4]  # PROMPT_LENGTH=1: 2 initialisers x 2 seeds
  write_manifest(root, points)
  done = write_done_run(root, points[0], rng)
  running = os.path.join(root, point_name(*points[1]))  # trained 100 steps, no eval yet
  write_record(running, gin_files=[points[1][1]], PROMPT_LENGTH=1, RANDOM_SEED=1)
  write_train(running, [(100, {"loss": 1.5, "examples_per_second": 64.0})])
  write_checkpoints(running, (0, 100))
  # points[2] never started: no folder at all.
  damaged = write_done_run(root, points[3], rng)
  with open(os.path.join(root, point_name(*points[3]), "inference_eval",
                         f"{TASK}-metrics.jsonl"), "a") as f:
    f.write('{"step": 400, "accura')  # a line cut short
  assert report.console_main([root, "--noplots"]) == 0
  err = capsys.readouterr().err
  assert err.count("pt-sweep: warning:") == 1 and "line 4 is damaged" in err

  rows = read_csv(root)
  runs = {r["name"]: r for r in by_row(rows, "run")}
  metric = f"{TASK}/accuracy"
  assert [runs[point_name(*p)]["status"] for p in points] == [
      "done", "running", "not started", "done"]
  row = runs[point_name(*points[1])]
  assert (row["steps_done"], row["train_steps"]) == ("100", "300")
  assert row[f"{metric} final"] == row[f"{metric} best"] == row[f"{metric} best_step"] == ""
  assert row["examples_per_second"] == "64.0"  # a single logged point: itself
  row = runs[point_name(*points[2])]
  assert row["steps_done"] == row[f"{metric} final"] == row["examples_per_second"] == ""
  assert row["train_steps"] == "300"  # from the manifest
  assert float(runs[point_name(*points[3])][f"{metric} final"]) == (
      damaged["evals"][-1][1]["accuracy"])

  # Over seeds: random_uniform has one run with metrics, class_labels one started.
  stats = {(r["gin_file"], r["row"]): r for r in rows if r["row"] != "run"}
  mean = stats[(GIN_FILES[0], "mean")]
  assert float(mean[f"{metric} final"]) == done["evals"][-1][1]["accuracy"]
  assert stats[(GIN_FILES[0], "std")][f"{metric} final"] == ""
  assert stats[(GIN_FILES[0], "n")][f"{metric} final"] == "1"
  assert mean["status"] == "1 done, 1 running"
  # The running run's throughput is in its row, not in the mean of finished runs.
  assert stats[(GIN_FILES[0], "n")]["examples_per_second"] == "1"
  assert float(mean["examples_per_second"]) == np.mean(done["speeds"][1:])

  with open(os.path.join(root, "results.md")) as f:
    markdown = f.read()
  line = next(l for l in markdown.splitlines() if l.startswith(f"| {point_name(*points[2])} "))
  cells = [c.strip() for c in line.split("|")[5:-1]]  # after name and the 3 axes
  assert cells == ["not started", "–/300"] + ["–"] * 6, line
  assert "(n=1)" in markdown


def test_figures_png_and_svg(sweep, capsys):
  root, _ = sweep
  assert report.console_main(["report", root, "--best"]) == 0
  assert "wrote" in capsys.readouterr().out
  for name in ("train_loss", "eval_curve", "ablation"):
    with open(os.path.join(root, "plots", f"{name}.png"), "rb") as f:
      assert f.read(8) == PNG_SIGNATURE
    with open(os.path.join(root, "plots", f"{name}.svg")) as f:
      assert "<svg" in f.read()
  with open(os.path.join(root, "results.md")) as f:
    assert "](plots/ablation.png)" in f.read()


def test_default_and_chosen_axes(sweep):
  root, _ = sweep
  loaded = report.load(root)
  assert loaded.axes == ["PROMPT_LENGTH", "gin_file", "RANDOM_SEED"]
  assert loaded.main_metric == f"{TASK}/accuracy"
  assert report.choose_axes(loaded) == ("PROMPT_LENGTH", "gin_file")
  assert report.choose_axes(loaded, x="gin_file") == ("gin_file", "PROMPT_LENGTH")
  assert report.resolve_metric(loaded, "loss") == f"{TASK}/loss"
  ablation = report._ablation(loaded, report.collect(root), loaded.main_metric,
                              "PROMPT_LENGTH", "gin_file", best=False)
  assert ablation.log_x and [l.label for l in ablation.panels[0].lines] == [
      "random_uniform", "class_labels"]
  assert [len(p.values) for p in ablation.panels[0].lines[0].points] == [2, 2]


@pytest.mark.parametrize("make_args, message", [
    (lambda root: [os.path.join(root, "absent")], "does not exist"),
    (lambda root: [os.path.join(root, "empty")], "nothing to report"),
    (lambda root: [os.path.join(root, "sweep"), "--metric", "rte/f1"], "unknown --metric"),
    (lambda root: [os.path.join(root, "sweep"), "--x", "LEARNING_RATE"], "unknown --x"),
    (lambda root: [os.path.join(root, "sweep"), "--hue", "RANDOM_SEED"], "average over seeds"),
    (lambda root: [os.path.join(root, "damaged")], "sweep.json is damaged"),
    (lambda root: [os.path.join(root, "sweep"), "--bogus"], "unrecognized arguments"),
    (lambda root: [], "required: ROOT"),
])
def test_bad_input_one_error_line(tmp_path, capsys, make_args, message):
  root = str(tmp_path)
  os.makedirs(os.path.join(root, "empty", "nothing_here"))
  os.makedirs(os.path.join(root, "damaged"))
  with open(os.path.join(root, "damaged", "sweep.json"), "w") as f:
    f.write('{"version": 1, "points": [')
  run = os.path.join(root, "sweep", "a")
  write_record(run)
  write_evals(run, TASK, [(100, {"accuracy": 50.0})])
  assert report.console_main(make_args(root)) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("pt-sweep: error: ") and message in err, err


def test_damaged_run_record_is_a_warning(tmp_path, capsys):
  root = str(tmp_path)
  good, bad = os.path.join(root, "good"), os.path.join(root, "bad")
  write_record(good, PROMPT_LENGTH=1)
  write_record(bad, PROMPT_LENGTH=5)
  with open(os.path.join(bad, "run.json"), "w") as f:
    f.write('{"version": 1, "macros": {')
  write_checkpoints(bad, (0,))
  assert report.console_main([root, "--noplots"]) == 0
  err = capsys.readouterr().err
  assert err.startswith("pt-sweep: warning: ") and "run.json is damaged" in err
  rows = {r["name"]: r for r in read_csv(root)}
  assert rows["bad"]["status"] == "unknown" and rows["bad"]["train_steps"] == ""


def test_axes_inferred_without_manifest(tmp_path):
  root = str(tmp_path)
  for length in (1, 20, 100):
    for seed in (0, 1):
      # Two levels down, in arbitrary order; MODEL_DIR and paths inside it differ trivially.
      model_dir = os.path.join(root, f"seed{seed}", f"len{length}")
      write_record(model_dir, gin_files=[GIN_FILES[seed == 1 and length == 1]],
                   PROMPT_LENGTH=length, RANDOM_SEED=seed)
      write_evals(model_dir, TASK, [(300, {"accuracy": float(length + seed)})])
      if (length, seed) != (20, 0):  # that one is still training
        write_checkpoints(model_dir, (0, 300))
  loaded = report.load(root)
  assert loaded.axes == ["gin_file", "PROMPT_LENGTH", "RANDOM_SEED"]
  assert [r.values["PROMPT_LENGTH"] for r in loaded.runs] == [1, 1, 20, 20, 100, 100]
  assert loaded.runs[1].values["gin_file"] == GIN_FILES[0]
  assert report.choose_axes(loaded) == ("PROMPT_LENGTH", "gin_file")
  markdown = report.write_report(root)
  assert "| seed0/len20 | random_uniform | 20 | 0 | running | –/300 | 20.00 |" in markdown
  assert "| seed1/len20 | random_uniform | 20 | 1 | done | 300/300 | 21.00 |" in markdown
  assert "| random_uniform | 20 | 2 | 1 running, 1 done | 21.00 (n=1) |" in markdown
  assert os.path.exists(os.path.join(root, "plots", "ablation.png"))


def test_single_run_mixture_rank_and_resume(tmp_path):
  """One run folder of a mixture evaluated with EVAL_DECODING='both', resumed once."""
  model_dir = str(tmp_path / "run")
  write_record(model_dir, train_steps=200, task="mix")
  for subdir, shift in (("rank", 0.0), ("greedy", -10.0)):
    for step, (a, b) in ((100, (60.0, 70.0)), (200, (80.0, 50.0))):
      write_evals(model_dir, "a", [(step, {"accuracy": a + shift})], subdir)
      write_evals(model_dir, "b", [(step, {"accuracy": b + shift, "routing/prompt_0": 0.5})],
                  subdir)
      write_evals(model_dir, "mix", [(step, {"a/accuracy": a + shift, "b/accuracy": b + shift,
                                             "average": (a + b) / 2 + shift})], subdir)
  # Killed after step 150, resumed from step 100: the rerun's 150 replaces the old one.
  write_train(model_dir, [(50, {"loss": 4.0}), (100, {"loss": 3.0}), (150, {"loss": 9.0})])
  write_train(model_dir, [(150, {"loss": 2.0}), (200, {"loss": 1.0})])
  write_checkpoints(model_dir, (0, 100, 200))
  loaded = report.load(model_dir)
  (run,) = loaded.runs
  assert loaded.main_metric == "mix/average" and loaded.axes == []
  assert run.metrics["mix/average"] == [(100, 65.0), (200, 65.0)]  # rank/, not greedy/
  assert run.metrics["b/accuracy"] == [(100, 70.0), (200, 50.0)]
  assert not any("routing" in m for m in loaded.metrics)
  assert run.train["loss"] == [(50, 4.0), (100, 3.0), (150, 2.0), (200, 1.0)]
  assert run.status == "done"
  (row,) = report.collect(model_dir)
  assert (row["mix/average best"], row["mix/average best_step"]) == (65.0, 100)
  assert (row["b/accuracy final"], row["b/accuracy best"]) == (50.0, 70.0)
  markdown = report.write_report(model_dir, metric="average")
  assert "| run | done | 200/200 | 65.00 | 65.00 (@100) |" in markdown
  assert "Over seeds" not in markdown  # one run: nothing to aggregate
  assert os.path.exists(os.path.join(model_dir, "plots", "eval_curve.svg"))
  assert not os.path.exists(os.path.join(model_dir, "plots", "ablation.png"))


def test_failed_runs(tmp_path):
  """Failures the report can see: the manifest's exit code, a pt-train error in a log."""
  root = str(tmp_path)
  points = all_points()[:3]
  write_manifest(root, points)
  with open(os.path.join(root, "sweep.json")) as f:
    manifest = json.load(f)
  manifest["points"][1]["returncode"] = 1
  with open(os.path.join(root, "sweep.json"), "w") as f:
    json.dump(manifest, f)
  error = "pt-train: error: loss is nan at step 120: the prompt diverged"
  for point in points[1:]:
    model_dir = os.path.join(root, point_name(*point))
    write_record(model_dir)
    write_checkpoints(model_dir, (0, 100))
    with open(os.path.join(model_dir, "train.log"), "w") as f:
      f.write(f"step 100/300 loss 1.2\n{error}\n")
  rows = report.collect(root)
  assert [r["status"] for r in rows] == ["not started", "failed", "failed"]
  assert [r["error"] for r in rows] == [None, "exit status 1", error]
  assert rows[1]["steps_done"] == 100  # what it did before failing is still shown
  assert f"- {rows[2]['name']}: {error}" in report.write_report(root, plots=False)
