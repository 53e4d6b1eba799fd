"""bench/accelerator.py, the command prepared for a GPU, on the CPU at a tiny
size: it runs every kind of row without TensorFlow, seqio or clu (the device
machines have none), and its memory plan says what fits. (The plan's activation figures are checked
by the measured rows on a GPU; XLA:CPU's buffer figures hardly move with the
remat policy, so a CPU cannot check them.)"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Importing any of these fails in the child, as on the device machine.
BLOCKED = ("tensorflow", "seqio", "clu", "tensorflow_datasets")


def _run(*args, timeout=600):
  code = ("import runpy, sys\n"
          + "".join(f"sys.modules[{name!r}] = None\n" for name in BLOCKED)
          + f"sys.argv = ['bench/accelerator.py', *{list(args)!r}]\n"
          + "runpy.run_path('bench/accelerator.py', run_name='__main__')\n")
  return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _rows(stdout):
  return [json.loads(l) for l in stdout.splitlines() if l.startswith("{")]


def test_every_row_runs_on_cpu_without_tensorflow():
  result = _run("--size", "tiny", "--batch", "4", "--inputs", "32", "--targets", "8",
                "--prompt", "6", "--steps", "1", "--warmup", "0", "--decode_tokens", "4",
                "--peak_size", "256")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = _rows(result.stdout)
  train = [r for r in rows if r["row"] == "train"]
  assert [(r["method"], r["remat"]) for r in train] == [
      ("prompt", "none"), ("prompt", "layer"), ("prompt", "matmuls"),
      ("lora", "none"), ("mam", "none"), ("smop", "none")]
  for r in train:
    assert r["step_s"] > 0 and r["examples_per_s"] > 0 and r["xla_memory_gb"] > 0
    assert r["plan_gb"] > 0 and r["mfu_datasheet"] is None  # no datasheet peak for a CPU
    if r["method"] in ("prompt", "smop"):  # the plan's analytic count of the frozen model
      assert r["plan_frozen_params"] == r["frozen_params"]
  prompt = train[0]
  assert prompt["model_flops_per_s"] > 0 and 0 < prompt["mfu_measured_peak"] < 1.5
  assert not train[5].get("smop_emulated")
  (decode,) = [r for r in rows if r["row"] == "decode"]
  assert decode["tokens_per_s"] > 0 and decode["decode_tokens"] == 4
  (numerics,) = [r for r in rows if r["row"] == "numerics"]
  assert abs(numerics["relative_difference"]) < 0.05  # bf16 activations, one batch
  assert "| train tiny prompt remat=layer |" in result.stdout
  assert "measured matmul peak" in result.stdout


def test_plan_says_what_fits_xxl_on_80_gb():
  result = _run("--plan", "--size", "xxl")
  assert result.returncode == 0, result.stderr[-3000:]
  plan = {r["remat"]: r for r in _rows(result.stdout)}
  assert set(plan) == {"none", "layer", "matmuls"}
  # T5 1.1 XXL: 11.1e9 frozen parameters in float32.
  assert plan["none"]["frozen_weights"] == pytest.approx(44.5, abs=0.2)
  assert not plan["none"]["fits"] and plan["layer"]["fits"]
  assert plan["none"]["activations"] > plan["matmuls"]["activations"] > plan["layer"][
      "activations"]
  assert "| xxl | layer |" in result.stdout
