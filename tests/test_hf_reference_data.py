"""Checks the stored Hugging Face T5 reference files (see make_hf_reference.py)."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_hf_reference as mhr  # pylint: disable=g-import-not-at-top,wrong-import-position

NAMES = sorted(mhr.CONFIGS)
CONFIG_KEYS = {"vocab", "emb", "heads", "head_dim", "mlp", "num_encoder_layers",
               "num_decoder_layers", "buckets", "max_distance", "activation",
               "gated", "tied"}


@pytest.mark.parametrize("name", NAMES)
def test_reference_file_layout(name):
  path = mhr.reference_path(name)
  assert os.path.exists(path), f"missing {path}; run tests/make_hf_reference.py"
  assert os.path.getsize(path) < 300_000
  params, config, arrays = mhr.load_reference(path)

  assert CONFIG_KEYS <= set(config)
  assert config == mhr.CONFIGS[name]
  assert config["activation"] == ("gelu_tanh" if config["gated"] else "relu")
  expected = mhr.param_shapes(config)
  assert set(params) == set(expected)
  for k, shape in expected.items():
    assert params[k].shape == shape and params[k].dtype == np.float32, k
  assert config["tied"] == ("decoder/logits_dense/kernel" not in params)

  b, p, e, v = 3, config["prompt_length"], config["emb"], config["vocab"]
  shapes = {"input_ids": (b, 7), "prompt": (p, e), "targets": (b, 5),
            "decoder_input_ids": (b, 5), "encoder_output": (b, p + 7, e),
            "logits": (b, 5, v), "target_loglik": (b,)}
  assert set(arrays) == set(shapes)
  for k, shape in shapes.items():
    assert arrays[k].shape == shape, k
    kind = "i" if k.endswith(("ids", "targets")) else "f"
    assert arrays[k].dtype.kind == kind and arrays[k].dtype.itemsize == 4, k
    assert np.all(np.isfinite(arrays[k])), k
  for k, x in params.items():
    assert np.all(np.isfinite(x)), k

  np.testing.assert_array_equal(arrays["decoder_input_ids"],
                                mhr.shift_right(arrays["targets"]))
  np.testing.assert_array_equal((arrays["input_ids"] > 0).sum(1), [7, 5, 3])
  np.testing.assert_array_equal((arrays["targets"] > 0).sum(1), [5, 3, 1])
  assert np.all(arrays["target_loglik"] < 0)


@pytest.mark.parametrize("name", NAMES)
def test_reference_matches_numpy_t5(name):
  """Independent float64 numpy T5 agrees with the stored HF outputs."""
  params, config, a = mhr.load_reference(name)
  out = mhr.numpy_outputs(params, config, a["input_ids"], a["prompt"],
                          a["targets"])
  for k in mhr.OUTPUT_KEYS:
    np.testing.assert_allclose(out[k], a[k], rtol=1e-4, atol=1e-4, err_msg=k)


@pytest.mark.parametrize("name", NAMES)
def test_reference_reproduces_with_hf(name):
  pytest.importorskip("torch", reason="torch is not installed")
  pytest.importorskip("transformers", reason="transformers is not installed")
  params, config, a = mhr.load_reference(name)
  out = mhr.hf_outputs(params, config, a["input_ids"], a["prompt"],
                       a["targets"])
  for k in mhr.OUTPUT_KEYS:
    np.testing.assert_allclose(out[k], a[k], rtol=0, atol=1e-5, err_msg=k)
  np.testing.assert_array_equal(out["decoder_input_ids"],
                                a["decoder_input_ids"])
