"""The remat policies of the frozen stack (T5Config.remat_policy, gin macro
REMAT_POLICY): the same T5X parameter tree and the same loss and gradients
under every policy; a bad value is a ConfigError naming the choices."""
import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

import helpers  # pylint: disable=g-bad-import-order
from prompt_tuning import gin_utils
from prompt_tuning import methods
from prompt_tuning import model_params
from prompt_tuning import models
from prompt_tuning import param_utils
from prompt_tuning import prompts
from prompt_tuning import t5

TINY = helpers.tiny_config(dropout_rate=0.1, remat_policy="none")
SITES = methods.Methods(lora=methods.LoRAMethod(rank=2),
                        adapters=methods.AdapterMethod(bottleneck=4, sublayers=("mlp",)))


def _model(policy):
  config = dataclasses.replace(TINY, remat_policy=policy)
  return models.EncoderDecoderModel(t5.Transformer(
      config, prompt=prompts.Prompt(length=3, init=nn.initializers.normal(1.0)), sites=SITES))


@pytest.fixture(scope="module")
def reference():
  model = _model("none")
  params = helpers.perturbed_params(model)
  return params, _loss_and_grads(model, params)


def _loss_and_grads(model, params):
  return helpers.loss_and_grads(model, params, dropout_rng=jax.random.PRNGKey(3))


@pytest.mark.parametrize("policy", ["layer", "matmuls", "auto"])
def test_same_params_loss_and_gradients(policy, reference):
  params, (loss, grads) = reference
  model = _model(policy)
  shapes = nn.unbox(model_params.abstract_params(model, model_params.dummy_batch(1, 9, 5)))
  flat = param_utils.flatten(shapes)
  assert {k: v.shape for k, v in flat.items()} == {
      k: v.shape for k, v in param_utils.flatten(params).items()}
  assert "encoder/layers_0/attention/query/kernel" in flat
  assert "decoder/layers_1/mlp/wi_0/kernel" in flat
  remat_loss, remat_grads = _loss_and_grads(model, params)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6, atol=1e-6)
  # Gradients to 1e-6 of each parameter's gradient scale: recomputing in the
  # backward pass fuses the same float32 operations differently (rounding).
  for name, g in param_utils.flatten(grads).items():
    scale = max(1.0, float(np.max(np.abs(g))))
    np.testing.assert_allclose(param_utils.flatten(remat_grads)[name], g, rtol=0,
                               atol=1e-6 * scale, err_msg=name)


def test_remat_is_really_applied():
  """'layer' and 'matmuls' put a checkpoint (remat) in the gradient's jaxpr."""
  batch = helpers.loss_batch()
  for policy, expected in (("none", False), ("layer", True), ("matmuls", True)):
    model = _model(policy)
    params = model_params.init_random(model, jax.random.PRNGKey(0),
                                      model_params.dummy_batch(1, 9, 5))
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
