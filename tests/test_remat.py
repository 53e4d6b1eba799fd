"""The remat policies of the frozen stack (T5Config.remat_policy, gin macro
REMAT_POLICY): the same T5X parameter tree and the same loss and gradients
under every policy; a bad value is a ConfigError naming the choices."""
import dataclasses
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

import conftest  # pylint: disable=g-bad-import-order
import helpers  # pylint: disable=g-bad-import-order
from prompt_tuning import gin_utils
from prompt_tuning.model import t5
from prompt_tuning.model import weights
from prompt_tuning.storage import trees

from remat_worker import TINY  # pylint: disable=g-bad-import-order
from remat_worker import model as _model  # pylint: disable=g-bad-import-order


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
  """{policy: (loss, flat gradients)} and the parameters, computed with XLA's
  default optimisation (remat_worker.py in a process of its own): the
  tolerances below are the rounding of the code users run (the tests'
  cheaper compile flags round differently, conftest.TEST_XLA_FLAGS)."""
  out = tmp_path_factory.mktemp("remat") / "computed.npz"
  env = dict(os.environ, **conftest.DEFAULT_XLA_ENV,
             PYTHONPATH=os.pathsep.join([str(helpers.TESTS), os.environ.get("PYTHONPATH", "")]))
  result = subprocess.run([sys.executable, str(helpers.TESTS / "remat_worker.py"), str(out)],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  arrays = dict(np.load(out))
  params = trees.unflatten({k[len("params/"):]: v for k, v in arrays.items()
                                  if k.startswith("params/")})
  by_policy = {}
  for key, value in arrays.items():
    policy, kind, *name = key.split("/", 2)
    if kind == "loss":
      by_policy.setdefault(policy, [None, {}])[0] = value
    elif kind == "grads":
      by_policy.setdefault(policy, [None, {}])[1][name[0]] = value
  return params, by_policy


@pytest.mark.parametrize("policy", ["layer", "matmuls", "auto"])
def test_same_params_loss_and_gradients(policy, computed):
  params, by_policy = computed
  loss, grads = by_policy["none"]
  model = _model(policy)
  shapes = nn.unbox(weights.abstract_params(model, weights.dummy_batch(1, 9, 5)))
  flat = trees.flatten(shapes)
  assert {k: v.shape for k, v in flat.items()} == {
      k: v.shape for k, v in trees.flatten(params).items()}
  assert "encoder/layers_0/attention/query/kernel" in flat
  assert "decoder/layers_1/mlp/wi_0/kernel" in flat
  remat_loss, remat_grads = by_policy[policy]
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6, atol=1e-6)
  # Gradients to 1e-6 of each parameter's gradient scale: recomputing in the
  # backward pass fuses the same float32 operations differently (rounding).
  assert set(remat_grads) == set(grads)
  for name, g in grads.items():
    scale = max(1.0, float(np.max(np.abs(g))))
    np.testing.assert_allclose(remat_grads[name], g, rtol=0, atol=1e-6 * scale, err_msg=name)


def test_remat_is_really_applied():
  """'layer' and 'matmuls' put a checkpoint (remat) in the gradient's jaxpr."""
  batch = helpers.loss_batch()
  for policy, expected in (("none", False), ("layer", True), ("matmuls", True)):
    model = _model(policy)
    params = weights.init_random(model, jax.random.PRNGKey(0),
                                      weights.dummy_batch(1, 9, 5))
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: model.loss_fn(p, batch)[0]))(params))
    assert ("remat" in jaxpr or "checkpoint" in jaxpr) == expected, policy


def test_auto_resolves_by_backend():
  assert t5.resolve_remat_policy("auto") == (
      "none" if jax.default_backend() == "cpu" else "matmuls")
  assert t5.resolve_remat_policy("layer") == "layer"


def test_bad_policy_is_a_config_error():
  with pytest.raises(gin_utils.ConfigError, match="REMAT_POLICY must be one of 'auto', 'none', "
                     "'layer', 'matmuls', got 'full'"):
    dataclasses.replace(TINY, remat_policy="full")


def test_bench_remat_flag(capsys):
  """bench/train_step.py --remat: the policy and XLA's scratch memory in the row."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "train_step.py"
  spec = importlib.util.spec_from_file_location("bench_train_step_remat", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  rows = bench.main(["--size", "tiny", "--batch", "2", "--inputs", "16", "--targets", "4",
                     "--prompt", "5", "--steps", "1", "--warmup", "0", "--remat", "layer"])
  capsys.readouterr()
  assert rows[0]["remat"] == "layer" and rows[0]["xla_temp_mb"] > 0
