"""layers.matmul: bf16 products on CPU with bf16 operands and float32
accumulation (XLA:CPU's library kernels), the same numbers as the plain
einsum's, and every method, decoding path and the model-split mesh running
with it (XLA:CPU has no fallback for a bf16 x bf16 -> float32 product its
library refuses, so a wrong shape here is a crash, not a slowdown)."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers  # pylint: disable=g-bad-import-order
from prompt_tuning import methods
from prompt_tuning.methods import prompts
from prompt_tuning.model import encoder_decoder
from prompt_tuning.model import layers
from prompt_tuning.model import t5
from prompt_tuning.model import weights
from prompt_tuning.storage import trees

BF16 = helpers.tiny_config(dtype="bfloat16", remat_policy="none")
cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the narrow path is CPU's")


@pytest.fixture(autouse=True)
def bf16_cpu(monkeypatch):
  """The narrow path as on a CPU with bf16 instructions, whatever this one has
  (XLA:CPU runs its bf16 kernels without them too, only slower)."""
  monkeypatch.setattr(layers, "cpu_multiplies_bf16", lambda: True)


@pytest.mark.parametrize("flags,expected", [
    ("flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_fp16", True),   # Zen 4, Sapphire Rapids
    ("flags\t\t: fpu sse avx2 amx_bf16 amx_tile", True),
    ("Features\t: fp asimd sve bf16 i8mm", True),                         # Arm (Graviton3)
    ("flags\t\t: fpu sse sse2 avx avx2 fma", False),                      # AVX2 only
    ("flags\t\t: fpu avx512f avx512bw avx512vl", False),                  # AVX-512 without BF16
    ("Features\t: fp asimd evtstrm aes", False),
    ("model name\t: bf16 in a name is not a flag", False),
])
def test_cpu_flags(flags, expected):
  cpuinfo = f"processor\t: 0\n{flags}\n\nprocessor\t: 1\n{flags}\n"
  assert layers.cpu_flags_multiply_bf16(cpuinfo) == expected


@cpu_only
def test_cpu_without_bf16_instructions_uses_the_float32_product(monkeypatch):
  """XLA:CPU's bf16 kernels are slower than its float32 product without bf16
  instructions: there matmul is the float32 product rounded once, the narrow
  path's numbers (to summation order), forward and backward."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((3, 5, 32)), jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((32, 24)), jnp.bfloat16)
  g = jnp.asarray(rng.standard_normal((3, 5, 24)), jnp.bfloat16)

  def run():  # a new function each time: make_jaxpr caches by function
    product = lambda x, w: layers.matmul("...i,io->...o", x, w, jnp.bfloat16)
    y, vjp = jax.vjp(product, x, w)
    return str(jax.make_jaxpr(product)(x, w)), [np.asarray(v, np.float32) for v in (y, *vjp(g))]
  narrow_jaxpr, narrow = run()
  monkeypatch.setattr(layers, "cpu_multiplies_bf16", lambda: False)
  wide_jaxpr, wide = run()
  assert "custom_vjp" in narrow_jaxpr and "custom_vjp" not in wide_jaxpr
  assert "convert_element_type[new_dtype=float32" in wide_jaxpr
  for got, want in zip(wide, narrow):
    np.testing.assert_allclose(got, want, rtol=2 ** -7, atol=1e-6)


@pytest.mark.parametrize("spec,a,b,expected", [
    ("...i,io->...o", (4, 9, 32), (32, 16), True),      # Dense
    ("...d,vd->...v", (4, 5, 32), (64, 32), True),      # tied logits
    ("...i,io->...o", (1, 1, 32), (32, 16), True),      # one decoding step
    ("bqhd,bkhd->bhqk", (2, 5, 2, 8), (2, 7, 2, 8), False),  # batch indices
    ("...i,io->...o", (2, 3), (3, 4), False),            # every side < 8
    ("ij,k->ik", (9, 9), (9,), False),                   # j summed within one operand
])
def test_library_shape(spec, a, b, expected):
  assert layers._library_shape(spec, a, b) == expected  # pylint: disable=protected-access


@cpu_only
def test_values_and_gradients_are_the_bf16_products():
  """Forward and input cotangent: bf16 operands, float32 sums, one rounding:
  within one bf16 rounding of the float32 product of the same bf16 values.
  Kernel cotangent: the plain einsum's."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 5, 32)), jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((32, 24)), jnp.bfloat16)
  g = jnp.asarray(rng.standard_normal((3, 5, 24)), jnp.bfloat16)
  f32 = lambda v: np.asarray(v, np.float32)
  y, vjp = jax.vjp(lambda x, w: layers.matmul("...i,io->...o", x, w, jnp.bfloat16), x, w)
  dx, dw = vjp(g)
  assert y.dtype == dx.dtype == dw.dtype == jnp.bfloat16
  for got, want in ((y, np.einsum("bti,io->bto", f32(x), f32(w))),
                    (dx, np.einsum("bto,io->bti", f32(g), f32(w))),
                    (dw, np.einsum("bti,bto->io", f32(x), f32(g)))):
    np.testing.assert_allclose(f32(got), want, rtol=2 ** -8, atol=1e-6)
  jaxpr = str(jax.make_jaxpr(lambda x, w: layers.matmul("...i,io->...o", x, w, jnp.bfloat16))(x, w))
  assert "custom_vjp" in jaxpr and "preferred_element_type=float32" in jaxpr
  plain = str(jax.make_jaxpr(lambda x, w: layers.matmul("...i,io->...o", x, w, jnp.float32))(x, w))
  assert "custom_vjp" not in plain


def _model(sites=layers.IDENTITY, prompt_length=3, config=BF16, smop=False):
  if smop:
    from prompt_tuning.methods import smop as smop_lib  # pylint: disable=g-import-not-at-top
    prompt = smop_lib.SMoP(num_prompts=2, length=2, init=nn.initializers.normal(1.0))
  else:
    prompt = prompts.Prompt(length=prompt_length, init=nn.initializers.normal(1.0))
  return encoder_decoder.EncoderDecoderModel(t5.Transformer(config, prompt=prompt, sites=sites))


METHODS = {
    "prompt": {},
    "smop": {"smop": True},
    "lora_all+adapters": {"sites": methods.Methods(
        lora=methods.LoRAMethod(rank=2, targets=methods.PROJECTIONS),
        adapters=methods.AdapterMethod(bottleneck=4))},
    "prefix": {"sites": methods.Methods(prefix_tuning=methods.PrefixMethod(3))},
    "mam": {"sites": methods.Methods(prefix_tuning=methods.PrefixMethod(2),
                                     adapters=methods.AdapterMethod(8, 4.0, True, ("mlp",)))},
}


@cpu_only
@pytest.mark.parametrize("name", sorted(METHODS))
def test_loss_and_gradients_match_the_plain_einsum(name, monkeypatch):
  """The whole bf16 model: loss and trainable gradients as with plain bf16
  einsums (XLA widening both operands), to bf16's rounding."""
  model = _model(**METHODS[name])
  params = helpers.perturbed_params(model)
  narrow_loss, narrow_grads = helpers.loss_and_grads(model, params)
  monkeypatch.setattr(layers, "_library_shape", lambda *a: False)
  plain_loss, plain_grads = helpers.loss_and_grads(model, params)
  assert np.isfinite(narrow_loss)
  np.testing.assert_allclose(narrow_loss, plain_loss, rtol=2e-2)
  for key, g in trees.flatten(plain_grads).items():
    scale = max(float(np.max(np.abs(g))), 1e-3)
    np.testing.assert_allclose(trees.flatten(narrow_grads)[key], g, rtol=0,
                               atol=5e-2 * scale, err_msg=key)


@cpu_only
@pytest.mark.parametrize("remat", ["layer", "matmuls"])
def test_remat_policies_run(remat):
  model = _model(config=dataclasses.replace(BF16, remat_policy=remat))
  loss, grads = helpers.loss_and_grads(model, helpers.perturbed_params(model))
  assert np.isfinite(loss)
  assert all(np.all(np.isfinite(np.asarray(g, np.float32)))
             for g in jax.tree_util.tree_leaves(grads))


@cpu_only
@pytest.mark.parametrize("name", ["prompt", "prefix", "mam"])
def test_greedy_decoding_cached_and_uncached(name):
  """Both decoding paths run with bf16 products (a decoding step is a [b, 1]
  product) and agree token for token on this model."""
  model = _model(**METHODS[name])
  params = helpers.perturbed_params(model)
  batch = helpers.loss_batch()
  cached = np.asarray(model.predict_batch(params, batch, max_decode_length=6, cached=True))
  uncached = np.asarray(model.predict_batch(params, batch, max_decode_length=6, cached=False))
  assert cached.shape == (4, 6)
  np.testing.assert_array_equal(cached, uncached)


def test_narrowed_frozen_names():
  """narrow_frozen casts the backbone's kernels and embeddings only: not the
  norm scales (read in float32), nor any method parameter (a frozen SMoP
  router keeps float32)."""
  model = _model(sites=METHODS["lora_all+adapters"]["sites"], smop=True)
  params = trees.flatten(helpers.perturbed_params(model))
  narrowed = trees.flatten(weights.narrow_frozen(trees.unflatten(params),
                                                            "bfloat16"))
  cast = {k for k, v in narrowed.items() if v.dtype == jnp.bfloat16}
  backbone = {k for k in params if (k.endswith("/kernel") and "/lora/" not in k
                                    and "/router/" not in k)
              or k.endswith("embedding") and not k.startswith("encoder/prompt")}
  assert cast == backbone
  assert "token_embedder/embedding" in cast and "decoder/logits_dense/kernel" in cast
  assert "encoder/relpos_bias/rel_embedding" in cast
  assert "encoder/prompt/router/kernel" not in cast and "encoder/encoder_norm/scale" not in cast
  for key in cast:
    np.testing.assert_array_equal(np.asarray(narrowed[key], np.float32),
                                  np.asarray(jnp.asarray(params[key], jnp.bfloat16), np.float32))
  same = trees.unflatten(params)
  assert weights.narrow_frozen(same, "float32") is same


@pytest.mark.parametrize("name", sorted(METHODS))
def test_narrowed_frozen_changes_no_number(name):
  """Loss and gradients with the frozen weights stored in bf16 are the ones
  with them in float32, bit for bit: the layers cast them where they read them."""
  model = _model(**METHODS[name])
  params = helpers.perturbed_params(model)
  trainable, frozen = trees.split(params, methods.TRAINABLE_PARAMS)
  narrowed = weights.narrow_frozen(frozen, "bfloat16")
  assert any(v.dtype == jnp.bfloat16 for v in jax.tree_util.tree_leaves(narrowed))
  want_loss, want_grads = helpers.loss_and_grads(model, trees.merge(trainable, frozen))
  got_loss, got_grads = helpers.loss_and_grads(model, trees.merge(trainable, narrowed))
  np.testing.assert_array_equal(got_loss, want_loss)
  for key, g in trees.flatten(want_grads).items():
    np.testing.assert_array_equal(trees.flatten(got_grads)[key], g, err_msg=key)


@cpu_only
def test_one_example_and_ensembles_decode():
  """A batch of one (pt-infer) and the ensembles' vmaps (per member, per
  example) decode with bf16 products, cached as uncached."""
  from prompt_tuning.methods import multiprompt  # pylint: disable=g-import-not-at-top
  model = _model()
  batch = {k: v[:1] for k, v in helpers.loss_batch().items()}
  one = [np.asarray(model.predict_batch(helpers.perturbed_params(model), batch,
                                        max_decode_length=6, cached=c))
         for c in (True, False)]
  np.testing.assert_array_equal(one[0], one[1])
  members = []
  for seed in (4, 5):
    params = weights.init_random(model, jax.random.PRNGKey(seed),
                                      weights.dummy_batch(1, 9, 5))
    members.append(params)
  patterns = ["encoder/prompt/.*"]
  stacked = multiprompt.stack_trees([trees.split(p, patterns)[0] for p in members])
  frozen = weights.narrow_frozen(trees.split(members[0], patterns)[1], "bfloat16")
  tokens = helpers.loss_batch()["encoder_input_tokens"]

  def member(params, cached):
    encoded, mask = model.encode(params, tokens)
    return model.greedy_decode(params, encoded, mask, 6, cached=cached)[0]
  per_member = [np.asarray(jax.jit(lambda s, f, c=c: multiprompt.per_member(
      lambda p: member(p, c), s, f))(stacked, frozen)) for c in (True, False)]
  assert per_member[0].shape == (2, 4, 6)
  np.testing.assert_array_equal(per_member[0], per_member[1])
  rows = multiprompt.gather_rows(stacked, jnp.asarray([0, 1, 1, 0]))

  def greedy(params, tokens, done):
    encoded, mask = model.encode(params, tokens)
    return model.greedy_decode(params, encoded, mask, 6, done)[0]
  out = np.asarray(jax.jit(lambda r, f, t, d: multiprompt.per_example(greedy, r, f, t, d))(
      rows, frozen, tokens, jnp.zeros(4, bool)))
  assert out.shape == (4, 6)
