"""Reference outputs from Hugging Face `T5ForConditionalGeneration` (PyTorch).

Our Flax T5 is tested for numerical parity (within 1e-4) against the outputs
stored by this script in

  tests/testdata/hf_reference_t5_1_0.npz   (T5 1.0: ReLU MLP, tied logits)
  tests/testdata/hf_reference_t5_1_1.npz   (T5 1.1: gated-GELU MLP, own logits)

Run it as a script to regenerate them:

  python tests/make_hf_reference.py            # writes both files
  python tests/make_hf_reference.py --check    # only compares, writes nothing

It is also an importable module (torch/transformers are imported lazily, only
inside the functions that need them, so importing it without torch works):

  CONFIGS                       the two tiny configs, by name
  make_params(config, seed)     flat numpy params in the T5X layout ('/' names)
  make_inputs(config, seed)     input_ids, prompt, targets
  hf_outputs(flat_params, config, input_ids, prompt, targets)
      -> {'encoder_output', 'logits', 'target_loglik', 'decoder_input_ids'}
  numpy_outputs(...)            the same computed in plain numpy (float64), an
                                independent cross-check of the HF mapping
  load_reference(name)          the stored npz as (flat_params, config, arrays)

Parameter layout (T5X names, kernels are [in, out], no biases anywhere):

  token_embedder/embedding                               [vocab, emb]
  encoder/relpos_bias/rel_embedding                      [heads, buckets]
  encoder/layers_{i}/pre_attention_layer_norm/scale      [emb]
  encoder/layers_{i}/attention/{query,key,value}/kernel  [emb, heads*head_dim]
  encoder/layers_{i}/attention/out/kernel                [heads*head_dim, emb]
  encoder/layers_{i}/pre_mlp_layer_norm/scale            [emb]
  encoder/layers_{i}/mlp/wi/kernel                       [emb, mlp]  (T5 1.0)
  encoder/layers_{i}/mlp/wi_0/kernel, mlp/wi_1/kernel    [emb, mlp]  (T5 1.1)
  encoder/layers_{i}/mlp/wo/kernel                       [mlp, emb]
  encoder/encoder_norm/scale                             [emb]
  decoder/relpos_bias/rel_embedding                      [heads, buckets]
  decoder/layers_{i}/pre_self_attention_layer_norm/scale
  decoder/layers_{i}/self_attention/{query,key,value,out}/kernel
  decoder/layers_{i}/pre_cross_attention_layer_norm/scale
  decoder/layers_{i}/encoder_decoder_attention/{query,key,value,out}/kernel
  decoder/layers_{i}/pre_mlp_layer_norm/scale
  decoder/layers_{i}/mlp/...                             (as in the encoder)
  decoder/decoder_norm/scale
  decoder/logits_dense/kernel                            [emb, vocab] (1.1 only)

Mapping to HF: Linear.weight = kernel.T; shared/embed_tokens = embedding;
block[0].layer[0].SelfAttention.relative_attention_bias.weight (an
nn.Embedding(buckets, heads), present only in block 0 of each stack) =
rel_embedding.T; T5 1.0: lm_head.weight = embedding (tied); T5 1.1:
lm_head.weight = logits_dense/kernel.T.

Facts checked in the installed transformers 5.23 source
(transformers/models/t5/{configuration,modeling}_t5.py):

* Config names: d_model, d_kv, d_ff, num_layers, num_decoder_layers,
  num_heads, relative_attention_num_buckets, relative_attention_max_distance,
  dropout_rate, layer_norm_epsilon, feed_forward_proj, vocab_size.
* Tying / scaling changed in 5.x: `T5Config.__post_init__` pops the
  `tie_word_embeddings` kwarg, sets `scale_decoder_outputs = (kwarg is not
  False)` and then FORCES `config.tie_word_embeddings = True`;
  `T5ForConditionalGeneration._tied_weights_keys` ties lm_head.weight (and both
  embed_tokens) to shared.weight.  The forward multiplies the decoder output by
  d_model**-0.5 iff `config.scale_decoder_outputs`.  So for T5 1.0 we pass
  tie_word_embeddings=True (scaled, tied); for T5 1.1 we pass
  tie_word_embeddings=False (unscaled) AND untie lm_head by hand (replace
  `model.lm_head.weight` with its own nn.Parameter before loading weights);
  `_load_into_hf` asserts afterwards that lm_head and shared differ.
* Attention: `T5Attention.scaling = 1.0` (no 1/sqrt(d_kv)); the position bias
  is computed by block 0 only and shared by later blocks; the encoder uses
  bidirectional buckets, the decoder self-attention unidirectional buckets
  (`bidirectional=not is_decoder`), cross attention has no position bias.
  We use attn_implementation="eager".
* Activation: feed_forward_proj 'gated-gelu' -> is_gated_act and
  dense_act_fn 'gelu_new' = NewGELUActivation =
  0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x**3))) (tanh approximation);
  'relu' -> T5DenseActDense with ReLU.
* T5LayerNorm is RMSNorm (no mean subtraction, no bias), variance in float32.

Inputs: encoder inputs_embeds = concat(prompt broadcast over batch,
embedding[input_ids]) along length, attention_mask = concat(ones[B, P],
input_ids > 0); decoder_input_ids = targets shifted right with start id 0
(plain shift, no masking of the shifted-in zeros), decoder_attention_mask None
(causal only). target_loglik[b] = sum over t with targets[b, t] != 0 of
log_softmax(logits[b, t])[targets[b, t]].
"""

import argparse
import json
import os
import sys

import numpy as np

TESTDATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata")

CONFIGS = {
    "t5_1_0": dict(
        vocab=64, emb=16, heads=2, head_dim=6, mlp=24,
        num_encoder_layers=2, num_decoder_layers=2,
        buckets=8, max_distance=16,
        activation="relu", gated=False, tied=True,
        layer_norm_epsilon=1e-6, prompt_length=4),
    "t5_1_1": dict(
        vocab=64, emb=16, heads=2, head_dim=6, mlp=24,
        num_encoder_layers=2, num_decoder_layers=3,
        buckets=8, max_distance=16,
        activation="gelu_tanh", gated=True, tied=False,
        layer_norm_epsilon=1e-6, prompt_length=4),
}

PARAM_SEED = 0
INPUT_SEED = 1
BATCH = 3
INPUT_LENGTHS = (7, 5, 3)
TARGET_LENGTHS = (5, 3, 1)
EOS_ID = 1
PAD_ID = 0

OUTPUT_KEYS = ("encoder_output", "logits", "target_loglik")


# ----------------------------------------------------------------------------
# Parameters and inputs (numpy only).
# ----------------------------------------------------------------------------


def _mlp_names(config):
  return ("wi_0", "wi_1") if config["gated"] else ("wi",)


def param_shapes(config):
  """Ordered {name: shape} of the flat T5X-layout parameters."""
  v, e, m = config["vocab"], config["emb"], config["mlp"]
  hd = config["heads"] * config["head_dim"]
  rel = (config["heads"], config["buckets"])
  shapes = {"token_embedder/embedding": (v, e),
            "encoder/relpos_bias/rel_embedding": rel}

  def mlp(prefix):
    for n in _mlp_names(config):
      shapes[f"{prefix}/mlp/{n}/kernel"] = (e, m)
    shapes[f"{prefix}/mlp/wo/kernel"] = (m, e)

  def attention(prefix):
    for n in ("query", "key", "value"):
      shapes[f"{prefix}/{n}/kernel"] = (e, hd)
    shapes[f"{prefix}/out/kernel"] = (hd, e)

  for i in range(config["num_encoder_layers"]):
    p = f"encoder/layers_{i}"
    shapes[f"{p}/pre_attention_layer_norm/scale"] = (e,)
    attention(f"{p}/attention")
    shapes[f"{p}/pre_mlp_layer_norm/scale"] = (e,)
    mlp(p)
  shapes["encoder/encoder_norm/scale"] = (e,)
  shapes["decoder/relpos_bias/rel_embedding"] = rel
  for i in range(config["num_decoder_layers"]):
    p = f"decoder/layers_{i}"
    shapes[f"{p}/pre_self_attention_layer_norm/scale"] = (e,)
    attention(f"{p}/self_attention")
    shapes[f"{p}/pre_cross_attention_layer_norm/scale"] = (e,)
    attention(f"{p}/encoder_decoder_attention")
    shapes[f"{p}/pre_mlp_layer_norm/scale"] = (e,)
    mlp(p)
  shapes["decoder/decoder_norm/scale"] = (e,)
  if not config["tied"]:
    shapes["decoder/logits_dense/kernel"] = (e, v)
  return shapes


def make_params(config, seed=PARAM_SEED):
  """Deterministic float32 params, scaled so activations are O(1)."""
  rng = np.random.RandomState(seed)
  params = {}
  for name, shape in param_shapes(config).items():
    z = rng.standard_normal(shape)
    if name.endswith("/scale"):
      x = 1.0 + 0.2 * z
    elif name.endswith("rel_embedding"):
      x = 0.5 * z
    elif name == "token_embedder/embedding":
      x = z
    else:  # kernels [in, out]
      x = z * shape[0] ** -0.5
    params[name] = x.astype(np.float32)
  return params


def shift_right(targets, start_id=PAD_ID):
  targets = np.asarray(targets)
  start = np.full_like(targets[:, :1], start_id)
  return np.concatenate([start, targets[:, :-1]], axis=1).astype(np.int32)


def make_inputs(config, seed=INPUT_SEED):
  """Returns dict(input_ids [3,7], prompt [P,emb], targets [3,5])."""
  rng = np.random.RandomState(seed)
  v = config["vocab"]
  max_in, max_tg = max(INPUT_LENGTHS), max(TARGET_LENGTHS)
  input_ids = np.zeros((BATCH, max_in), np.int32)
  for b, n in enumerate(INPUT_LENGTHS):
    input_ids[b, :n] = rng.randint(2, v, size=n)
  targets = np.zeros((BATCH, max_tg), np.int32)
  for b, n in enumerate(TARGET_LENGTHS):
    targets[b, :n - 1] = rng.randint(2, v, size=n - 1)
    targets[b, n - 1] = EOS_ID
  prompt = rng.uniform(-0.5, 0.5, size=(config["prompt_length"], config["emb"]))
  return dict(input_ids=input_ids, prompt=prompt.astype(np.float32),
              targets=targets)


def _embed_with_prompt(embedding, input_ids, prompt):
  input_ids = np.asarray(input_ids)
  prompt = np.asarray(prompt, np.float32)
  b = input_ids.shape[0]
  if prompt.ndim == 2:
    prompt = np.broadcast_to(prompt[None], (b,) + prompt.shape)
  embedded = np.concatenate([prompt, embedding[input_ids]], axis=1)
  mask = np.concatenate(
      [np.ones(prompt.shape[:2], bool), input_ids > 0], axis=1)
  return embedded, mask


def _target_loglik(logits, targets):
  logits = np.asarray(logits, np.float64)
  m = logits.max(-1, keepdims=True)
  logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
  tok = np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
  return (tok * (np.asarray(targets) != 0)).sum(-1).astype(np.float32)


# ----------------------------------------------------------------------------
# Hugging Face (torch imported lazily).
# ----------------------------------------------------------------------------


def hf_config(config):
  from transformers import T5Config  # pylint: disable=g-import-not-at-top
  return T5Config(
      vocab_size=config["vocab"], d_model=config["emb"],
      d_kv=config["head_dim"], d_ff=config["mlp"],
      num_layers=config["num_encoder_layers"],
      num_decoder_layers=config["num_decoder_layers"],
      num_heads=config["heads"],
      relative_attention_num_buckets=config["buckets"],
      relative_attention_max_distance=config["max_distance"],
      dropout_rate=0.0,
      layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-6),
      feed_forward_proj="gated-gelu" if config["gated"] else "relu",
      tie_word_embeddings=bool(config["tied"]),
      pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=PAD_ID,
      attn_implementation="eager")


def hf_state_dict(flat_params, config):
  """Maps T5X-layout flat params to a T5ForConditionalGeneration state dict."""
  p = {k: np.asarray(v, np.float32) for k, v in flat_params.items()}
  sd = {}
  emb = p["token_embedder/embedding"]
  for k in ("shared.weight", "encoder.embed_tokens.weight",
            "decoder.embed_tokens.weight"):
    sd[k] = emb
  sd["lm_head.weight"] = (emb if config["tied"]
                          else p["decoder/logits_dense/kernel"].T)

  def attn(hf, t5x):
    for a, b in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out")):
      sd[f"{hf}.{a}.weight"] = p[f"{t5x}/{b}/kernel"].T

  def mlp(hf, t5x):
    for n in _mlp_names(config) + ("wo",):
      sd[f"{hf}.DenseReluDense.{n}.weight"] = p[f"{t5x}/mlp/{n}/kernel"].T
    sd[f"{hf}.layer_norm.weight"] = p[f"{t5x}/pre_mlp_layer_norm/scale"]

  for i in range(config["num_encoder_layers"]):
    hf, t5x = f"encoder.block.{i}.layer", f"encoder/layers_{i}"
    sd[f"{hf}.0.layer_norm.weight"] = p[f"{t5x}/pre_attention_layer_norm/scale"]
    attn(f"{hf}.0.SelfAttention", f"{t5x}/attention")
    mlp(f"{hf}.1", t5x)
  sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
      p["encoder/relpos_bias/rel_embedding"].T)
  sd["encoder.final_layer_norm.weight"] = p["encoder/encoder_norm/scale"]
  for i in range(config["num_decoder_layers"]):
    hf, t5x = f"decoder.block.{i}.layer", f"decoder/layers_{i}"
    sd[f"{hf}.0.layer_norm.weight"] = (
        p[f"{t5x}/pre_self_attention_layer_norm/scale"])
    attn(f"{hf}.0.SelfAttention", f"{t5x}/self_attention")
    sd[f"{hf}.1.layer_norm.weight"] = (
        p[f"{t5x}/pre_cross_attention_layer_norm/scale"])
    attn(f"{hf}.1.EncDecAttention", f"{t5x}/encoder_decoder_attention")
    mlp(f"{hf}.2", t5x)
  sd["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
      p["decoder/relpos_bias/rel_embedding"].T)
  sd["decoder.final_layer_norm.weight"] = p["decoder/decoder_norm/scale"]
  return sd


def _load_into_hf(flat_params, config):
  """Builds an eval-mode float32 HF model holding exactly `flat_params`."""
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import T5ForConditionalGeneration  # pylint: disable=g-import-not-at-top

  hf_cfg = hf_config(config)
  assert hf_cfg.relative_attention_max_distance == config["max_distance"]
  assert hf_cfg.relative_attention_num_buckets == config["buckets"]
  assert hf_cfg.is_gated_act == bool(config["gated"])
  assert hf_cfg.dense_act_fn == ("gelu_new" if config["gated"] else "relu")
  # transformers 5.x: tie_word_embeddings only controls the output scaling.
  assert getattr(hf_cfg, "scale_decoder_outputs", None) == bool(config["tied"])

  torch.manual_seed(0)
  model = T5ForConditionalGeneration(hf_cfg).to(torch.float32)
  if not config["tied"]:
    # The lm_head is tied to `shared` unconditionally in transformers 5.x.
    model.lm_head.weight = torch.nn.Parameter(
        torch.empty_like(model.lm_head.weight))
  model.eval()

  sd = hf_state_dict(flat_params, config)
  model_sd = model.state_dict()
  missing = set(model_sd) - set(sd)
  extra = set(sd) - set(model_sd)
  assert not missing and not extra, (sorted(missing), sorted(extra))
  with torch.no_grad():
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, value in sd.items():
      target = params[name]
      assert tuple(target.shape) == value.shape, (name, target.shape, value.shape)
      target.copy_(torch.from_numpy(np.ascontiguousarray(value)))
  # Every tensor must now hold what we asked for (catches unwanted tying).
  for name, value in model.state_dict().items():
    np.testing.assert_array_equal(value.numpy(), sd[name], err_msg=name)
  return model


def hf_outputs(flat_params, config, input_ids, prompt, targets):
  """Runs HF T5ForConditionalGeneration with the prompt prepended.

  Returns numpy: encoder_output [B, P+L, emb] float32, logits [B, T, vocab]
  float32, target_loglik [B] float32, decoder_input_ids [B, T] int32.
  """
  import torch  # pylint: disable=g-import-not-at-top

  model = _load_into_hf(flat_params, config)
  embedded, mask = _embed_with_prompt(
      np.asarray(flat_params["token_embedder/embedding"], np.float32),
      input_ids, prompt)
  decoder_input_ids = shift_right(targets)
  with torch.no_grad():
    out = model(
        inputs_embeds=torch.from_numpy(np.ascontiguousarray(embedded)),
        attention_mask=torch.from_numpy(mask.astype(np.int64)),
        decoder_input_ids=torch.from_numpy(decoder_input_ids.astype(np.int64)),
        decoder_attention_mask=None,
        use_cache=False,
        return_dict=True)
  logits = out.logits.float().numpy()
  return dict(
      encoder_output=out.encoder_last_hidden_state.float().numpy(),
      logits=logits,
      target_loglik=_target_loglik(logits, targets),
      decoder_input_ids=decoder_input_ids)


# ----------------------------------------------------------------------------
# Independent numpy implementation (float64), used only as a cross-check.
# ----------------------------------------------------------------------------


def _relpos_buckets(qlen, klen, bidirectional, num_buckets, max_distance):
  rel = np.arange(klen)[None, :] - np.arange(qlen)[:, None]  # memory - query
  ret = np.zeros_like(rel)
  n = -rel
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(rel.dtype) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  with np.errstate(divide="ignore"):
    large = max_exact + (
        np.log(np.maximum(n, 1e-9).astype(np.float32) / max_exact)
        / np.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).astype(rel.dtype)
  large = np.minimum(large, num_buckets - 1)
  return ret + np.where(is_small, n, large)


def numpy_outputs(flat_params, config, input_ids, prompt, targets):
  """Plain-numpy T5 forward (float64); same outputs as hf_outputs."""
  p = {k: np.asarray(v, np.float64) for k, v in flat_params.items()}
  eps = config.get("layer_norm_epsilon", 1e-6)
  h, d = config["heads"], config["head_dim"]

  def norm(x, s):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * s

  def attention(x, kv, prefix, bias):
    q = (x @ p[f"{prefix}/query/kernel"]).reshape(x.shape[:2] + (h, d))
    k = (kv @ p[f"{prefix}/key/kernel"]).reshape(kv.shape[:2] + (h, d))
    v = (kv @ p[f"{prefix}/value/kernel"]).reshape(kv.shape[:2] + (h, d))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) + bias
    logits = logits - logits.max(-1, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(x.shape[:2] + (h * d,))
    return o @ p[f"{prefix}/out/kernel"]

  def mlp(x, prefix):
    if config["gated"]:
      a = x @ p[f"{prefix}/mlp/wi_0/kernel"]
      a = 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a**3)))
      a = a * (x @ p[f"{prefix}/mlp/wi_1/kernel"])
    else:
      a = np.maximum(x @ p[f"{prefix}/mlp/wi/kernel"], 0)
    return a @ p[f"{prefix}/mlp/wo/kernel"]

  neg = -1e9
  embedded, mask = _embed_with_prompt(
      p["token_embedder/embedding"], input_ids, np.asarray(prompt, np.float64))
  x = embedded.astype(np.float64)
  n = x.shape[1]
  rel = p["encoder/relpos_bias/rel_embedding"][
      :, _relpos_buckets(n, n, True, config["buckets"], config["max_distance"])]
  enc_bias = rel[None] + np.where(mask, 0, neg)[:, None, None, :]
  for i in range(config["num_encoder_layers"]):
    pre = f"encoder/layers_{i}"
    y = norm(x, p[f"{pre}/pre_attention_layer_norm/scale"])
    x = x + attention(y, y, f"{pre}/attention", enc_bias)
    x = x + mlp(norm(x, p[f"{pre}/pre_mlp_layer_norm/scale"]), pre)
  enc = norm(x, p["encoder/encoder_norm/scale"])

  dec_in = shift_right(targets)
  x = p["token_embedder/embedding"][dec_in]
  t = x.shape[1]
  rel = p["decoder/relpos_bias/rel_embedding"][
      :, _relpos_buckets(t, t, False, config["buckets"], config["max_distance"])]
  causal = np.where(np.tril(np.ones((t, t), bool)), 0, neg)
  self_bias = rel[None] + causal[None, None]
  cross_bias = np.where(mask, 0, neg)[:, None, None, :]
  for i in range(config["num_decoder_layers"]):
    pre = f"decoder/layers_{i}"
    y = norm(x, p[f"{pre}/pre_self_attention_layer_norm/scale"])
    x = x + attention(y, y, f"{pre}/self_attention", self_bias)
    y = norm(x, p[f"{pre}/pre_cross_attention_layer_norm/scale"])
    x = x + attention(y, enc, f"{pre}/encoder_decoder_attention", cross_bias)
    x = x + mlp(norm(x, p[f"{pre}/pre_mlp_layer_norm/scale"]), pre)
  x = norm(x, p["decoder/decoder_norm/scale"])
  if config["tied"]:
    logits = (x * config["emb"] ** -0.5) @ p["token_embedder/embedding"].T
  else:
    logits = x @ p["decoder/logits_dense/kernel"]
  return dict(encoder_output=enc.astype(np.float32),
              logits=logits.astype(np.float32),
              target_loglik=_target_loglik(logits, targets),
              decoder_input_ids=dec_in)


# ----------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------


def reference_path(name):
  return os.path.join(TESTDATA, f"hf_reference_{name}.npz")


def build_reference(name):
  """Returns the dict of arrays stored in hf_reference_{name}.npz."""
  config = CONFIGS[name]
  params = make_params(config)
  inputs = make_inputs(config)
  out = hf_outputs(params, config, **inputs)
  ref = numpy_outputs(params, config, **inputs)
  for k in OUTPUT_KEYS:
    np.testing.assert_allclose(out[k], ref[k], rtol=1e-4, atol=1e-4,
                               err_msg=f"{name}: HF vs numpy {k}")
  arrays = {"param:" + k: v for k, v in params.items()}
  arrays["config_json"] = np.array(json.dumps(config, sort_keys=True))
  arrays["input_ids"] = inputs["input_ids"].astype(np.int32)
  arrays["prompt"] = inputs["prompt"].astype(np.float32)
  arrays["targets"] = inputs["targets"].astype(np.int32)
  arrays["decoder_input_ids"] = out["decoder_input_ids"].astype(np.int32)
  for k in OUTPUT_KEYS:
    arrays[k] = out[k].astype(np.float32)
  return arrays


def load_reference(name_or_path):
  """Returns (flat_params, config, arrays) from a stored reference file."""
  path = (name_or_path if name_or_path.endswith(".npz")
          else reference_path(name_or_path))
  with np.load(path, allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  config = json.loads(str(arrays.pop("config_json")))
  params = {k[len("param:"):]: arrays.pop(k)
            for k in list(arrays) if k.startswith("param:")}
  return params, config, arrays


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true",
                      help="compare with the stored files, write nothing")
  parser.add_argument("names", nargs="*", default=sorted(CONFIGS))
  args = parser.parse_args(argv)
  os.makedirs(TESTDATA, exist_ok=True)
  for name in args.names:
    arrays = build_reference(name)
    path = reference_path(name)
    if args.check:
      _, _, stored = load_reference(path)
      for k in OUTPUT_KEYS:
        np.testing.assert_allclose(stored[k], arrays[k], rtol=0, atol=1e-5)
      print(f"{path}: matches")
      continue
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({os.path.getsize(path)} bytes, "
          f"{sum(k.startswith('param:') for k in arrays)} params, "
          f"logits {arrays['logits'].shape}, "
          f"loglik {np.round(arrays['target_loglik'], 4).tolist()})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
