"""pt-train over a ('data', 'model') mesh of 8 host devices (4 x 2): the
frozen model is split over 'model' by its logical axes, batches over 'data',
and the prompt ends where a run with the same 4 input shards (DATA_SHARDS) and
an unsplit model (4 x 1) ends. (The input depends on the number of input
shards, one per host by default as in T5X: see partitioning.DataLayout;
tests/test_multihost.py checks the same mesh spread over 1 or 2 processes.)"""
import numpy as np
import pytest

import helpers  # pylint: disable=g-bad-import-order


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_model_split_run_matches_unsplit_run(tmp_path, dtype, monkeypatch, frozen_ckpt):
  """float32, and bfloat16 (T5 1.1's default: bf16 products, the frozen
  kernels stored in bf16, both split over the mesh)."""
  ckpt = frozen_ckpt
  args = (["--gin_file=" + f for f in helpers.TINY_FILES] + ["--gin_file=runs/prompt_finetune.gin"]
          + helpers.as_flags(helpers.TINY_BINDINGS + [
              f"INITIAL_CHECKPOINT_PATH = '{ckpt}'", "TRAIN_STEPS = 3", "EVAL_PERIOD = None",
              "DROPOUT_RATE = 0.0", f"ACTIVATION_DTYPE = '{dtype}'", "DATA_SHARDS = 4"]))
  prompts = {}
  for name, devices, partitions in (("unsplit", 4, 1), ("mesh", 8, 2)):
    monkeypatch.setenv("XLA_FLAGS", helpers.xla_flags(devices))
    result = helpers.run_cli("pt-train", args + [f"--gin.MODEL_DIR='{tmp_path / name}'",
                                                 f"--gin.NUM_PARTITIONS={partitions}"])
    assert result.returncode == 0, result.stderr[-3000:]
    prompts[name] = np.load(
        tmp_path / name / "numpy_checkpoints/checkpoint_3/encoder.prompt.prompt.npy")
  # bf16: the split model sums its partial products in another order, and
  # each rounding to bf16 is 2^-8 relative.
  np.testing.assert_allclose(prompts["mesh"], prompts["unsplit"],
                             atol=1e-3 if dtype == "float32" else 2e-2)
  assert np.abs(prompts["unsplit"]).max() > 0
