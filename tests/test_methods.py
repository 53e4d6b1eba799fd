"""The parameter-efficient family (methods.py, gin/methods/): the sites leave the
plain model unchanged, zero-initialised methods start at the frozen model,
prefixes attend as extra keys, the trainable counts follow closed forms on
T5 1.1 Base, bad settings are one-line errors, and every method trains,
resumes exactly and is evaluated by pt-eval."""
import shutil

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import configurables
from prompt_tuning.evaluation import job as eval_job
from prompt_tuning import gin_utils
from prompt_tuning import methods
from prompt_tuning.model import layers
from prompt_tuning.model import weights
from prompt_tuning.storage import numpy_checkpoints
from prompt_tuning.storage import t5x_checkpoints
from prompt_tuning.storage import trees

import helpers  # pylint: disable=g-bad-import-order

# The tiny test model with one layer per stack (fast to compile).
SMALL = ["DROPOUT_RATE = 0.0", "NUM_ENCODER_LAYERS = 1", "NUM_DECODER_LAYERS = 1"]
NO_PROMPT = ["t5.Transformer.prompt = None"]
# Small method sizes for the tiny model (EMBED_DIM 32, 2 heads x 8).
SIZES = {"lora": ["LORA_RANK = 4"], "prefix": ["PREFIX_LENGTH = 3"],
         "adapter": ["ADAPTER_BOTTLENECK = 4"], "parallel_adapter": ["ADAPTER_BOTTLENECK = 4"],
         "mam": ["PREFIX_LENGTH = 3", "ADAPTER_BOTTLENECK = 4"]}
BATCH = weights.dummy_batch(2, 8, 4)


def method_model(names, bindings=(), layers_bindings=SMALL):
  files = helpers.TINY_FILES + [f"methods/{n}.gin" for n in names]
  sizes = [b for n in names for b in SIZES.get(n, [])]
  return configurables.build_model(files, helpers.MODEL_BINDINGS + list(layers_bindings)
                                   + sizes + list(bindings))


def tokens_batch(seed=0, batch_size=3):
  rng = np.random.RandomState(seed)
  inputs = rng.randint(3, 300, (batch_size, 10)).astype(np.int32)
  inputs[:, 7:] = 0
  targets = rng.randint(3, 300, (batch_size, 4)).astype(np.int32)
  targets[0, 3] = 0
  return {"encoder_input_tokens": jnp.asarray(inputs),
          "decoder_input_tokens": jnp.asarray(np.concatenate(
              [np.zeros((batch_size, 1), np.int32), targets[:, :-1]], 1)),
          "decoder_target_tokens": jnp.asarray(targets)}


@pytest.fixture(scope="module")
def plain():
  """(the plain tiny model without a prompt, all its parameters)."""
  model = helpers.build_model(SMALL + NO_PROMPT)
  return model, weights.init_random(model, jax.random.PRNGKey(0), BATCH)


def with_method(model, frozen, seed=1):
  trainable = weights.init_trainable(model, jax.random.PRNGKey(seed), BATCH,
                                          methods.TRAINABLE_PARAMS)
  return trainable, trees.merge(trainable, frozen)


# ---------------------------------------------------------------- the seam


def test_no_method_is_the_plain_model(plain):
  """Methods() with no slot filled: the same parameters and the same jaxpr."""
  model, params = plain
  empty = helpers.build_model(SMALL + NO_PROMPT + ["t5.Transformer.sites = @methods.Methods()"])
  assert model.module.sites is layers.IDENTITY and empty.module.sites == methods.Methods()
  assert trees.shapes(weights.init_random(empty, jax.random.PRNGKey(0), BATCH)) \
      == trees.shapes(params)
  jaxpr = lambda m: str(jax.make_jaxpr(lambda p: m.logits(p, BATCH))(params))
  assert jaxpr(empty) == jaxpr(model)


def test_method_parameters_keep_t5x_names(plain):
  """Every method adds parameters only under its own names; the frozen tree is T5X's."""
  _, params = plain
  model = method_model(["lora", "mam"], ["LORA_TARGETS = ['query', 'value', 'wi', 'wo']"])
  abstract = nn.unbox(weights.abstract_params(model, BATCH))
  trainable, frozen = trees.split(abstract, methods.TRAINABLE_PARAMS)
  assert trees.shapes(frozen) == trees.shapes(params)
  names = trees.shapes(trainable)
  assert names["encoder/layers_0/attention/query/lora/a"] == (32, 4)
  assert names["decoder/layers_0/mlp/wi_1/lora/b"] == (4, 64)
  assert names["decoder/layers_0/mlp/wo/lora/a"] == (64, 4)
  assert names["decoder/layers_0/encoder_decoder_attention/prefix/key"] == (3, 16)
  assert names["encoder/layers_0/mlp_adapter/up"] == (4, 32)
  assert not any("attention_adapter" in n or "/key/lora" in n for n in names)


@pytest.mark.parametrize("names,bindings", [
    (["lora"], ["LORA_TARGETS = ['query', 'key', 'value', 'out', 'wi', 'wo']"]),
    (["adapter"], []),
    (["parallel_adapter"], ["ADAPTER_SUBLAYERS = ['attention', 'mlp']"]),
    (["lora", "parallel_adapter"], []),
])
def test_zero_initialised_methods_start_at_the_frozen_model(plain, names, bindings):
  model, params = plain
  method = method_model(names, bindings)
  trainable, merged = with_method(method, params)
  assert methods.count(trainable) > 0
  batch = tokens_batch()
  np.testing.assert_array_equal(np.asarray(method.logits(merged, batch)),
                                np.asarray(model.logits(params, batch)))
  # ... and the update is live: a non-zero up-projection changes the outputs.
  moved = jax.tree_util.tree_map(lambda x: x + 0.1, trainable)
  changed = method.logits(trees.merge(moved, params), batch)
  assert float(jnp.max(jnp.abs(changed - model.logits(params, batch)))) > 1e-3


def test_prefix_keys_and_values_attend_as_extra_positions():
  """One attention with a prefix == softmax over [prefix keys; keys] by hand."""
  heads, head_dim, length = 2, 4, 3
  sites = methods.PrefixMethod(length=length, attentions=("encoder/attention",))
  attention = layers.MultiHeadAttention(heads, head_dim, sites=sites, where="encoder/attention")
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(2, 5, 6), jnp.float32)
  mask = np.ones((2, 1, 5, 5), bool)
  mask[1, :, :, 3:] = False  # example 1: the last two positions are padding
  bias = layers.attention_bias(jnp.asarray(mask), jnp.float32)
  params = attention.init(jax.random.PRNGKey(0), x, x, bias)["params"]
  params = nn.unbox(params)
  got = attention.apply({"params": params}, x, x, bias)
  p = jax.tree_util.tree_map(np.asarray, params)
  q = (np.asarray(x) @ p["query"]["kernel"]).reshape(2, 5, heads, head_dim)
  k = np.concatenate([np.broadcast_to(p["prefix"]["key"], (2, length, 8)),
                      np.asarray(x) @ p["key"]["kernel"]], 1).reshape(2, -1, heads, head_dim)
  v = np.concatenate([np.broadcast_to(p["prefix"]["value"], (2, length, 8)),
                      np.asarray(x) @ p["value"]["kernel"]], 1).reshape(2, -1, heads, head_dim)
  logits = np.einsum("bqhd,bkhd->bhqk", q, k)
  logits += np.concatenate([np.zeros((2, 1, 5, length)), np.where(mask, 0.0, -1e10)], -1)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(2, 5, 8) @ p["out"]["kernel"]
  np.testing.assert_allclose(np.asarray(got), out, rtol=1e-5, atol=1e-5)
  assert p["prefix"]["key"].shape == (length, 8) and np.abs(p["prefix"]["key"]).max() <= 0.5


def test_prefix_reparameterisation_is_used_in_training_and_evaluation(plain):
  _, params = plain
  model = method_model(["prefix"], ["PREFIX_HIDDEN_DIM = 8"])
  trainable, merged = with_method(model, params)
  names = trees.shapes(trainable)
  assert names["encoder/layers_0/attention/prefix/embedding"] == (3, 32)
  assert names["encoder/layers_0/attention/prefix/hidden"] == (32, 8)
  assert names["encoder/layers_0/attention/prefix/out"] == (8, 32)
  batch = tokens_batch()
  train_logits = model.module.apply({"params": merged}, batch["encoder_input_tokens"],
                                    batch["decoder_input_tokens"], batch["decoder_target_tokens"],
                                    deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
  np.testing.assert_allclose(np.asarray(train_logits), np.asarray(model.logits(merged, batch)),
                             rtol=1e-6)  # DROPOUT_RATE 0: the same function either way


# ---------------------------------------------------------------- counts


def base_counts(names, bindings=()):
  """(trainable, frozen) parameter counts of T5 1.1 Base with methods, by eval_shape."""
  model = configurables.build_model(
      ["models/t5_1_1_base_prompt.gin"] + [f"methods/{n}.gin" for n in names], list(bindings))
  abstract = nn.unbox(weights.abstract_params(model, weights.dummy_batch(1, 8, 4)))
  trainable, frozen = trees.split(abstract, methods.TRAINABLE_PARAMS)
  return methods.count(trainable), methods.count(frozen)


# T5 1.1 Base: d 768, n = 12 heads x 64, f 2048, 12 + 12 layers, vocab 32128.
D, N, F, LAYERS, VOCAB = 768, 768, 2048, 12, 32128
ATTENTIONS = 3 * LAYERS           # encoder self, decoder self and cross
SUBLAYERS = 5 * LAYERS            # those and the two MLPs
FROZEN = (2 * VOCAB * D + 2 * 12 * 32 + 2 * D
          + LAYERS * (4 * D * N + 2 * D + 3 * D * F)
          + LAYERS * (8 * D * N + 3 * D + 3 * D * F))


@pytest.mark.parametrize("names,bindings,want", [
    ([], [], 100 * D),                                                      # prompt P=100
    (["lora"], [], ATTENTIONS * 2 * 8 * (D + N)),                           # r(in+out), q and v
    (["lora"], ["LORA_RANK = 16", "LORA_TARGETS = ['query', 'key', 'value', 'out', 'wi', 'wo']"],
     ATTENTIONS * 4 * 16 * (D + N) + 2 * LAYERS * 3 * 16 * (D + F)),
    (["prefix"], [], ATTENTIONS * 2 * 200 * N),                             # 2 l n
    (["prefix"], ["PREFIX_HIDDEN_DIM = 512"],
     ATTENTIONS * (200 * D + 512 * D + 512 * 2 * N)),
    (["adapter"], [], SUBLAYERS * 2 * 200 * D),                             # 2 r d
    (["parallel_adapter"], [], 2 * LAYERS * 2 * 512 * D),
    (["mam"], [], ATTENTIONS * 2 * 30 * N + 2 * LAYERS * 2 * 512 * D),
    (["lora", "prompt"], [], ATTENTIONS * 2 * 8 * (D + N) + 100 * D),
])
def test_trainable_counts_follow_the_closed_forms(names, bindings, want):
  trainable, frozen = base_counts(names, bindings)
  assert frozen == FROZEN == 247_577_856
  assert trainable == want
  assert "% of the frozen model's 247,577,856" in methods.describe_counts(
      {"x": np.zeros(trainable, np.int8)}, {"y": np.zeros(frozen, np.int8)})


def test_trainable_params_of_the_run_files_are_the_methods():
  from prompt_tuning import peft_commands  # pylint: disable=g-import-not-at-top,unused-import
  run = helpers.TINY_BINDINGS + ["MODEL_DIR = '/unused'", "INITIAL_CHECKPOINT_PATH = None"]
  for name, bindings in (("runs/prompt_finetune.gin", run), ("runs/prompt_eval.gin", run),
                         ("runs/prompt_infer.gin", helpers.MODEL_BINDINGS + [
                             "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 8}"]),
                         ("runs/peft_export.gin", helpers.MODEL_BINDINGS)):
    gin.clear_config()
    gin_utils.parse(helpers.TINY_FILES + [name], bindings)
    try:
      assert tuple(gin.query_parameter("%TRAINABLE_PARAMS")) == methods.TRAINABLE_PARAMS
    finally:
      gin.clear_config()


# ---------------------------------------------------------------- bad settings


@pytest.mark.parametrize("names,binding,message", [
    (["lora"], "LORA_RANK = 0", "LORA_RANK must be a positive integer, got 0"),
    (["lora"], "LORA_TARGETS = ['query', 'qkv']", "LORA_TARGETS: unknown projection 'qkv'"),
    (["lora"], "LORA_ALPHA = 0", "LORA_ALPHA must be > 0"),
    (["prefix"], "PREFIX_LENGTH = 0", "PREFIX_LENGTH must be an integer in 1..1024, got 0"),
    (["prefix"], "PREFIX_LENGTH = 5000", "PREFIX_LENGTH must be an integer in 1..1024, got 5000"),
    (["prefix"], "PREFIX_ATTENTIONS = ['cross']", "PREFIX_ATTENTIONS: unknown sublayer 'cross'"),
    (["adapter"], "ADAPTER_BOTTLENECK = 0", "ADAPTER_BOTTLENECK must be a positive integer"),
    (["parallel_adapter"], "ADAPTER_SCALE = -4.0", "ADAPTER_SCALE must be > 0, got -4.0"),
    (["mam"], "ADAPTER_SCALE = 0.0", "ADAPTER_SCALE must be > 0, got 0.0"),
])
def test_bad_settings_fail_before_model_dir(tmp_path, names, binding, message):
  model_dir = tmp_path / "run"
  with pytest.raises(methods.MethodError) as e:
    helpers.train_in_process(model_dir, ["INITIAL_CHECKPOINT_PATH = None", binding],
                             [f"methods/{n}.gin" for n in names] + ["runs/prompt_finetune.gin"])
  assert str(e.value).splitlines()[0].startswith(message)
  assert not model_dir.exists()


def test_bad_setting_is_one_cli_line(tmp_path):
  model_dir = tmp_path / "run"
  args = [f"--gin_file={f}" for f in helpers.TINY_FILES + ["methods/lora.gin",
                                                           "runs/prompt_finetune.gin"]]
  args += helpers.as_flags(helpers.TINY_BINDINGS + [f"MODEL_DIR = '{model_dir}'",
                                                    "INITIAL_CHECKPOINT_PATH = None",
                                                    "LORA_TARGETS = ['query', 'wq']"])
  result = helpers.run_cli_here("pt-train", args)
  assert result.returncode == 1, result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "pt-train: error: LORA_TARGETS: unknown projection 'wq' (choose from query, key, value, "
      "out, wi, wi_0, wi_1, wo)")
  assert not model_dir.exists()


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def frozen_ckpt(tmp_path_factory, plain):
  _, params = plain
  return t5x_checkpoints.save_checkpoint(str(tmp_path_factory.mktemp("frozen")),
                                     jax.device_get(params), 0)


def _losses(model, frozen, directory, batches):
  names = [p.name[:-len(".npy")].replace(".", "/") for p in directory.glob("*.npy")]
  params = numpy_checkpoints.load_params(str(directory), names)
  merged = trees.merge(jax.tree_util.tree_map(jnp.asarray, params), frozen)
  loss = jax.jit(lambda p, b: model.loss_fn(p, b)[0])
  return float(np.mean([loss(merged, b) for b in batches]))


# Two runs cover every method: LoRA + the MAM adapter (prefixes and the scaled
# parallel adapter) + a prompt, and sequential adapters + reparameterised prefixes.
@pytest.mark.parametrize("names,bindings,kinds", [
    (["lora", "mam", "prompt"], [], {"lora", "prefix", "adapter", "prompt"}),
    (["adapter", "prefix"], ["PREFIX_HIDDEN_DIM = 8"], {"prefix", "adapter"}),
])
def test_methods_train_resume_exactly_and_evaluate(tmp_path, frozen_ckpt, plain, names,
                                                   bindings, kinds):
  files = [f"methods/{n}.gin" for n in names]
  sizes = sorted({b for n in names for b in SIZES.get(n, [])}) + bindings
  common = SMALL + sizes + [f"INITIAL_CHECKPOINT_PATH = '{frozen_ckpt}'", "CHECKPOINT_PERIOD = 3",
                            "EVAL_PERIOD = None", "LOG_PERIOD = 1", "TRAIN_STEPS = 6",
                            "LORA_DROPOUT = 0.1" if "lora" in names else "DROPOUT_RATE = 0.0"]
  run = tmp_path / "run"
  helpers.train_in_process(run, common, files + ["runs/prompt_finetune.gin"])
  last = run / "numpy_checkpoints" / "checkpoint_6"
  want = {p.name: np.load(p) for p in last.glob("*.npy")}
  # Resuming from checkpoint_3 (as after a kill at step 4 or 5) redoes steps 4-6 exactly.
  shutil.rmtree(last)
  helpers.train_in_process(run, common, files + ["runs/prompt_finetune.gin"])
  got = {p.name: np.load(p) for p in last.glob("*.npy")}
  assert sorted(got) == sorted(want)
  parts = {"prompt": ".prompt.", "lora": ".lora.", "prefix": ".prefix.", "adapter": "_adapter."}
  assert {k for k, part in parts.items() if any(part in n for n in want)} == kinds
  for name, value in want.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)

  # The loss on the batches it trained on fell.
  model = method_model(names, bindings)
  from prompt_tuning import data  # pylint: disable=g-import-not-at-top
  ds = data.get_dataset("demo_last_word", {"inputs": 32, "targets": 8}, "train", 8, seed=0)
  batches = list(ds.take(3).as_numpy_iterator())
  _, frozen = trees.split(plain[1], methods.TRAINABLE_PARAMS)
  before = _losses(model, frozen, run / "numpy_checkpoints" / "checkpoint_0", batches)
  after = _losses(model, frozen, last, batches)
  assert after < before, (before, after)

  # pt-eval reads every parameter of the method from MODEL_DIR's latest checkpoint.
  gin.clear_config()
  gin_utils.parse(helpers.TINY_FILES + files + ["runs/prompt_eval.gin"],
                  helpers.TINY_BINDINGS + SMALL + sizes
                  + [f"MODEL_DIR = '{run}'", f"INITIAL_CHECKPOINT_PATH = '{frozen_ckpt}'",
                     f"EVAL_OUTPUT_DIR = '{tmp_path / 'eval'}'"])
  try:
    result = eval_job.evaluate()
  finally:
    gin.clear_config()
  assert 0.0 <= result["demo_last_word"]["accuracy"] <= 100.0
