"""bench/train_step.py: one tiny run end to end, and its FLOP count by hand."""
import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest

import prompt_tuning

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "train_step.py"
TINY_ARGS = ["--size", "tiny", "--batch", "2", "--inputs", "16", "--targets", "4",
             "--prompt", "5", "--steps", "2", "--warmup", "1"]
POSITIVE = ("step_s", "examples_per_s", "tokens_per_s", "model_flops_per_step",
            "model_flops_per_s", "peak_rss_mb", "compile_s")


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("bench_train_step", BENCH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_tiny_run_prints_one_json_row(bench, capsys):
  rows = bench.main(TINY_ARGS)
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(rows) == 1 and len(lines) == 1
  row = json.loads(lines[0])
  assert row == rows[0]
  for key in ("size", "batch", "inputs", "targets", "prompt", "dtype", "backend",
              "device_kind", "xla_flops_per_step") + POSITIVE:
    assert key in row, key
  for key in POSITIVE:
    assert row[key] > 0, key
  assert (row["size"], row["batch"], row["inputs"], row["targets"], row["prompt"]) == (
      "tiny", 2, 16, 4, 5)
  assert row["encoder_length"] == 21
  assert row["dtype"] == ("float32" if row["backend"] == "cpu" else "bfloat16")
  assert row["model_flops_per_step"] == bench.count_flops(bench.make_config("tiny"), 2, 21, 4)
  assert row["trainable_params"] == 5 * 64
  if row["xla_flops_per_step"] is not None:
    assert row["xla_flops_per_step"] > 0


def test_count_flops_by_hand(bench):
  config = bench.make_config("tiny")  # d 64, n = 4*16 = 64, f 128, gated (g = 2), 2 + 2 layers
  b, L, T, d, n, f, V = 2, 21, 4, 64, 64, 128, 32128
  # Forward.
  enc_w = 2 * b * L * (4 * d * n + 3 * d * f)       # q k v out, wi_0 wi_1 wo
  enc_a = 2 * (2 * b * L * L * n)                   # scores, values
  self_w = 2 * b * T * 4 * d * n
  self_a = 2 * (2 * b * T * T * n)
  cross_q, cross_out = 2 * b * T * d * n, 2 * b * T * n * d
  cross_kv = 2 * (2 * b * L * d * n)
  cross_scores = cross_values = 2 * b * T * L * n
  dec_mlp = 2 * b * T * 3 * d * f
  logits = 2 * b * T * d * V
  dec_fwd = self_w + self_a + cross_q + cross_out + cross_kv + cross_scores + cross_values + dec_mlp
  forward = 2 * (enc_w + enc_a) + 2 * dec_fwd + logits
  assert bench.count_flops(config, b, L, T, training=False) == forward
  # Training: weight matmuls 2x, activation-activation matmuls 3x; the first decoder
  # layer's self-attention and cross-attention query do not see the prompt (1x) and
  # its cross-attention scores need only the key gradient (2x).
  enc_train = 2 * enc_w + 3 * enc_a
  first = (self_w + self_a + cross_q + 2 * (cross_out + cross_kv + dec_mlp)
           + 2 * cross_scores + 3 * cross_values)
  later = 2 * (self_w + cross_q + cross_out + cross_kv + dec_mlp) + 3 * (
      self_a + cross_scores + cross_values)
  training = 2 * enc_train + first + later + 2 * logits
  assert bench.count_flops(config, b, L, T) == training
  assert training == 86_755_328  # the numbers above, multiplied out
  assert 2 * forward < training < 3 * forward


def test_smop_cost_ratio_matches_the_paper_setting(bench):
  # SMoP 4x5 prepends 5 tokens: about 0.73 of the cost of a 100-token prompt.
  config = bench.make_config("small")
  ratio = bench.count_flops(config, 8, 5 + 256, 8) / bench.count_flops(config, 8, 100 + 256, 8)
  assert 0.70 < ratio < 0.75


def test_compare_smop_prints_both_runs_and_the_ratios(bench, capsys):
  args = ["--size", "tiny", "--batch", "2", "--inputs", "16", "--targets", "4", "--prompt", "10",
          "--steps", "1", "--warmup", "0", "--compare-smop"]
  prompt_row, smop_row, summary = bench.main(args)
  assert len(capsys.readouterr().out.strip().splitlines()) == 3
  assert (prompt_row["method"], smop_row["method"]) == ("prompt", "smop")
  assert summary["smop_over_prompt_step_ratio"] > 0
  assert prompt_row["prompt"] == 10
  assert 0 < summary["smop_over_prompt_flops_ratio"] < 1
  assert summary["smop_over_prompt_flops_ratio"] == pytest.approx(
      smop_row["model_flops_per_step"] / prompt_row["model_flops_per_step"])
  assert summary["smop_emulated"] == smop_row["smop_emulated"]
  if smop_row["smop_emulated"]:
    assert summary["note"] == "smop module not available; emulated with a 5-token prompt"
    assert smop_row["prompt"] == 5


def test_smop_is_emulated_without_the_module(bench, monkeypatch):
  import prompt_tuning.methods  # pylint: disable=g-import-not-at-top
  monkeypatch.delattr(prompt_tuning.methods, "smop", raising=False)
  monkeypatch.setitem(sys.modules, "prompt_tuning.methods.smop", None)  # import fails
  module, note = bench.smop_module(4, 5)
  assert note == "smop module not available; emulated with a 5-token prompt"
  assert module.length == 5


def test_methods_print_their_trainable_counts(bench, capsys):
  args = ["--size", "tiny", "--batch", "2", "--inputs", "16", "--targets", "4", "--steps", "1",
          "--warmup", "0", "--method", "lora", "--method", "mam"]
  lora, mam = bench.main(args)
  # tiny: d 64, 4 heads x 16, mlp 128, 2 + 2 layers (6 attentions, 4 MLPs).
  assert lora["method"] == "lora" and lora["trainable_params"] == 6 * 2 * 8 * (64 + 64)
  assert mam["trainable_params"] == 6 * 2 * 30 * 64 + 4 * 2 * 512 * 64
  assert lora["frozen_params"] == mam["frozen_params"] > 0
  assert lora["model_flops_per_step"] is None and lora["step_s"] > 0
  assert lora["prompt"] == 0 and np.isfinite(mam["loss"])
  assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_train_step_reports_the_fraction_of_its_own_matmul_peak(bench):
  row = bench.main(TINY_ARGS + ["--peak-size", "256"])[0]
  assert row["matmul_peak_flops_per_s"] > 0
  assert row["fraction_of_matmul_peak"] == pytest.approx(
      row["model_flops_per_s"] / row["matmul_peak_flops_per_s"])


TASK_BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "task_step.py"


def test_task_mode_on_fewglue_rte(capsys, fewglue_dir, t5_vocab_path):
  """bench/task_step.py: real pt-train steps on FewGLUE RTE, fixed vs buckets vs grouped."""
  spec = importlib.util.spec_from_file_location("bench_task_step", TASK_BENCH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  rows = module.main(["--size", "tiny", "--batch", "4", "--inputs", "256", "--targets", "8",
                      "--prompt", "3", "--steps", "3", "--group", "2", "--peak-size", "256",
                      "--padding", "fixed", "--padding", "buckets+group",
                      "--superglue-data-dir", str(fewglue_dir),
                      "--vocabulary", str(t5_vocab_path)])
  lines = capsys.readouterr().out.strip().splitlines()
  assert [json.loads(l) for l in lines] == rows
  fixed, grouped, summary = rows
  assert [r["padding"] for r in rows[:2]] == ["fixed", "buckets+group"]
  for row in rows[:2]:
    for key in ("examples_per_s", "padded_fraction", "compiles", "fraction_of_matmul_peak",
                "step_s", "encoder_length_mean"):
      assert key in row, key
    assert row["compiles"] == len(row["shapes"]) >= 1
    assert np.isfinite(row["loss"])
  assert fixed["shapes"] == [[256, 8]] and fixed["compiles"] == 1
  assert fixed["examples_per_s"] > 0
  # RTE's inputs are far shorter than 256 tokens: buckets pad much less.
  assert grouped["padded_fraction"] < fixed["padded_fraction"] - 0.2
  assert all(e < 256 for e, _ in grouped["shapes"])
  assert grouped["group_by_length"] == 2
  assert set(summary["speedup_over_fixed"]) >= {"fixed"}


@pytest.mark.parametrize("script,argv", [
    ("train_step.py", ["--dtype", "float16"]),
    ("task_step.py", ["--dtype", "float16"]),
    ("peft_baseline.py", ["run", "--fixed", "8", "--dtype", "float16"]),
])
def test_bad_dtype_is_one_usage_error(script, argv, capsys):
  """--dtype takes float32 or bfloat16; anything else is argparse's usage
  error (exit 2) naming the choices, before any work."""
  path = pathlib.Path(__file__).resolve().parents[1] / "bench" / script
  spec = importlib.util.spec_from_file_location(f"bench_{path.stem}_dtype", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  entry = module.parse_args if hasattr(module, "parse_args") else module.main
  with pytest.raises(SystemExit) as exit_info:
    entry(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "--dtype: invalid choice: 'float16'" in err and "'bfloat16'" in err
