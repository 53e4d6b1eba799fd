r"""Hugging Face PEFT adapters of T5, both ways: `pt-import-peft`, `pt-export-peft`.

    pt-import-peft ADAPTER_DIR OUT_DIR
    pt-eval --gin_file=models/t5_1_1_base_prompt.gin --gin_file=runs/prompt_eval.gin \
            --gin_file=OUT_DIR/method.gin --gin.PROMPT_FILE="'OUT_DIR'" ...

    pt-export-peft --gin_file=models/t5_1_1_base_prompt.gin --gin_file=methods/lora.gin \
            --gin.MODEL_DIR="'/runs/lora'" --output_dir=/runs/lora/peft_adapter \
            --base_model=google/t5-v1_1-base

ADAPTER_DIR is what PEFT's `save_pretrained` writes (adapter_config.json +
adapter_model.safetensors). OUT_DIR becomes a numpy checkpoint folder (one
.npy per parameter, checksums.json) holding also `method.gin`, the method
settings that make pt-eval build the same model, and `peft_adapter_config.json`
(the adapter's own config, for the record). The other way, pt-export-peft reads
a trained run's parameters as pt-eval does (PROMPT_FILE, or MODEL_DIR's newest
intact checkpoint) under the same gin files as training, and writes an adapter
folder that `PeftModel.from_pretrained(t5, folder)` loads.

What maps to what (checked in PEFT 0.21.2 and transformers 5.24, and tested
against PEFT's own scores, tests/make_peft_reference.py):

  LORA            `{encoder,decoder}.block.{i}.layer.{j}.{SelfAttention,
                  EncDecAttention,DenseReluDense}.{q,k,v,o,wi,wi_0,wi_1,wo}
                  .lora_{A,B}.weight` [r, in] / [out, r] <-> our
                  `.../{query,...}/lora/{a,b}` [in, r] / [r, out] (transposed).
                  Scaling lora_alpha / r (lora_alpha / sqrt(r) with
                  use_rslora, imported as LORA_ALPHA = lora_alpha * sqrt(r)).
                  methods/lora.gin puts LoRA on the named projections of every
                  attention and MLP, so an adapter on a subset of layers
                  (layers_to_transform, a regex) is refused, as are DoRA, LoRA
                  biases, rank/alpha patterns and modules_to_save.
  PROMPT_TUNING   `prompt_embeddings` [P * n, d]: PEFT's seq2seq forward
                  prepends the first P rows to the embedded encoder input (the
                  n - 1 further rows, which PEFT creates for seq2seq models by
                  default, are never used) = our `encoder/prompt/prompt` [P, d].
  PREFIX_TUNING   `prompt_embeddings` [l, num_layers * 2 * D] (already folded
                  through the reparameterisation MLP when prefix_projection is
                  set): layer i's key rows are columns [2i D, (2i+1) D), its
                  value rows the next D. PEFT hands them to the decoder as its
                  self-attention key/value cache and empties the cross-attention
                  cache, so they act in the decoder's self-attention only, at
                  positions 0..l-1 with T5's relative position bias:
                  methods/prefix_peft.gin, parameters
                  `decoder/layers_{i}/self_attention/prefix/{key,value}` [l, D].

Bad input (a missing or malformed adapter folder, an unsupported PEFT type or
option, an OUT_DIR that exists and is not empty, a run whose method PEFT has
no equivalent for) gives one line `pt-import-peft: error: ...` (or
pt-export-peft) and exit status 1, and nothing is written. OUT_DIR is written
under a temporary name and renamed when complete.
"""
import json
import math
import os
import re
from typing import Dict, Optional

import numpy as np

from prompt_tuning.storage import file_utils
from prompt_tuning.storage import safetensors_io

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
METHOD_GIN = "method.gin"
RECORD_FILE = "peft_adapter_config.json"
PROMPT_PARAM = "encoder/prompt/prompt"

# (stack, HF sublayer of a T5 block) <-> our sublayer name.
_SUBLAYERS = {
    ("encoder", "0.SelfAttention"): "attention",
    ("encoder", "1.DenseReluDense"): "mlp",
    ("decoder", "0.SelfAttention"): "self_attention",
    ("decoder", "1.EncDecAttention"): "encoder_decoder_attention",
    ("decoder", "2.DenseReluDense"): "mlp",
}
_HF_SUBLAYER = {(stack, ours): hf for (stack, hf), ours in _SUBLAYERS.items()}
_PROJECTIONS = {"q": "query", "k": "key", "v": "value", "o": "out",
                "wi": "wi", "wi_0": "wi_0", "wi_1": "wi_1", "wo": "wo"}
_HF_PROJECTION = {v: k for k, v in _PROJECTIONS.items()}
_ATTENTION_PROJECTIONS = ("query", "key", "value", "out")
_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(encoder|decoder)\.block\.(\d+)\.layer\."
    r"(\d\.(?:SelfAttention|EncDecAttention|DenseReluDense))\.(q|k|v|o|wi|wi_0|wi_1|wo)"
    r"\.lora_(A|B)\.weight$")
_OUR_LORA = re.compile(
    r"^(encoder|decoder)/layers_(\d+)/(attention|self_attention|encoder_decoder_attention|mlp)/"
    r"(query|key|value|out|wi|wi_0|wi_1|wo)/lora/(a|b)$")
_OUR_PREFIX = re.compile(r"^decoder/layers_(\d+)/self_attention/prefix/(key|value|embedding|"
                         r"hidden|out)$")
# LoraConfig options that change what the adapter computes and that our LoRA
# does not have: importing would silently score differently.
_LORA_UNSUPPORTED = {
    "use_dora": (False, None), "bias": ("none", None), "lora_bias": (False, None),
    "fan_in_fan_out": (False, None), "rank_pattern": ({}, None), "alpha_pattern": ({}, None),
    "layers_to_transform": (None,), "layers_pattern": (None, [], ""),
    "modules_to_save": (None, []), "layer_replication": (None,),
    "target_parameters": (None, []), "use_qalora": (False, None), "exclude_modules": (None, []),
    "trainable_token_indices": (None,), "alora_invocation_tokens": (None,),
}


class PeftError(ValueError):
  """A PEFT adapter folder (or a run) that cannot be converted; says why."""


# ---------------------------------------------------------------- import


def read_adapter(adapter_dir: str):
  """(config dict, tensors) of a PEFT adapter folder."""
  if not file_utils.isdir(adapter_dir):
    raise PeftError(f"{adapter_dir} is not a folder: give the folder PEFT's save_pretrained "
                    f"wrote ({CONFIG_FILE} + {WEIGHTS_FILE})")
  config_path = os.path.join(adapter_dir, CONFIG_FILE)
  if not file_utils.exists(config_path):
    raise PeftError(f"{adapter_dir} has no {CONFIG_FILE}: is it a PEFT adapter folder?")
  try:
    config = json.loads(file_utils.read_bytes(config_path).decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise PeftError(f"{config_path} is not valid JSON: {e}") from None
  if not isinstance(config, dict):
    raise PeftError(f"{config_path} is not a JSON object")
  weights_path = os.path.join(adapter_dir, WEIGHTS_FILE)
  if not file_utils.exists(weights_path):
    pickled = file_utils.exists(os.path.join(adapter_dir, "adapter_model.bin"))
    raise PeftError(
        f"{adapter_dir} has no {WEIGHTS_FILE}" + (
            " (only adapter_model.bin, a pickle, which is not read: re-save it with "
            "save_pretrained(..., safe_serialization=True))" if pickled else ""))
  try:
    tensors, _ = safetensors_io.load(weights_path)
  except safetensors_io.SafetensorsError as e:
    raise PeftError(str(e)) from None
  return config, tensors


def _int_field(config, name, path):
  value = config.get(name)
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise PeftError(f"{path}: {name} must be a positive integer, got {value!r}")
  return value


def _number(value) -> bool:
  """A finite JSON number (not a bool, string or NaN)."""
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def _comment(value) -> str:
  """`value` as text safe inside one gin comment line: newlines and other
  control or non-ASCII characters escaped as in JSON."""
  return json.dumps(str(value))[1:-1]


def _check_seq2seq(config, path):
  task = config.get("task_type")
  if task not in ("SEQ_2_SEQ_LM", None):
    raise PeftError(f"{path}: task_type is {task!r}; only T5 adapters (SEQ_2_SEQ_LM) convert")


def _lora_params(config, tensors, path):
  """LoRA tensors -> (our flat params, method.gin lines)."""
  for option, allowed in _LORA_UNSUPPORTED.items():
    if option in config and config[option] not in allowed:
      raise PeftError(f"{path}: {option} = {config[option]!r} is not supported "
                      "(methods/lora.gin has no such option)")
  rank = _int_field(config, "r", path)
  lora_alpha = config.get("lora_alpha")
  if not _number(lora_alpha) or lora_alpha <= 0:
    raise PeftError(f"{path}: lora_alpha must be a finite number > 0, got {lora_alpha!r}")
  # PEFT scales by lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA; ours
  # by LORA_ALPHA / r, so rsLoRA imports as LORA_ALPHA = lora_alpha * sqrt(r).
  alpha = float(lora_alpha) * (math.sqrt(rank) if config.get("use_rslora") else 1.0)
  dropout = config.get("lora_dropout") or 0.0
  if not _number(dropout) or not 0 <= dropout < 1:
    raise PeftError(f"{path}: lora_dropout must be a number in [0, 1), got "
                    f"{config.get('lora_dropout')!r}")
  dropout = float(dropout)
  flat, sites = {}, {}
  for key, value in tensors.items():
    match = _LORA_KEY.match(key)
    if not match:
      raise PeftError(f"{path}: tensor {key!r} is not a LoRA weight of a T5 model's "
                      "attention or MLP")
    stack, block, hf_sublayer, hf_proj, which = match.groups()
    sublayer = _SUBLAYERS.get((stack, hf_sublayer))
    if sublayer is None:
      raise PeftError(f"{path}: tensor {key!r}: no {hf_sublayer} in a T5 {stack} block")
    proj = _PROJECTIONS[hf_proj]
    if (proj in _ATTENTION_PROJECTIONS) != (sublayer != "mlp"):
      raise PeftError(f"{path}: tensor {key!r}: no {hf_proj} in {hf_sublayer}")
    expect = (rank, None) if which == "A" else (None, rank)
    if value.ndim != 2 or any(e is not None and e != s for e, s in zip(expect, value.shape)):
      raise PeftError(f"{path}: {key} has shape {list(value.shape)}, r = {rank} expects "
                      f"{'[r, in]' if which == 'A' else '[out, r]'}")
    name = f"{stack}/layers_{int(block)}/{sublayer}/{proj}/lora/{which.lower()}"
    flat[name] = np.asarray(value, np.float32).T
    sites.setdefault((stack, int(block), sublayer), set()).add(proj)
  if not flat:
    raise PeftError(f"{path} holds no LoRA weight")
  for name in flat:
    pair = name[:-1] + ("b" if name.endswith("a") else "a")
    if pair not in flat:
      raise PeftError(f"{path}: {name} has no matching lora_{'B' if name.endswith('a') else 'A'}")
  targets = sorted({p for projs in sites.values() for p in projs},
                   key=list(_HF_PROJECTION).index)
  # methods/lora.gin puts LoRA on each target projection of EVERY attention
  # and MLP that has it: the adapter must do the same to convert exactly.
  blocks = {stack: max([b for (s, b, _) in sites if s == stack], default=-1) + 1
            for stack in ("encoder", "decoder")}
  for (stack, hf_sublayer), sublayer in _SUBLAYERS.items():
    for block in range(blocks[stack]):
      have = sites.get((stack, block, sublayer), set())
      want = {p for p in targets if (p in _ATTENTION_PROJECTIONS) == (sublayer != "mlp")}
      if have != want:
        missing = sorted(want - have)
        raise PeftError(
            f"{path}: LoRA on {', '.join(targets)} but not on {', '.join(missing)} of "
            f"{stack}.block.{block}.layer.{hf_sublayer}: methods/lora.gin applies LORA_TARGETS "
            "to every attention and MLP, so this adapter (a subset of layers) does not convert")
  gin_lines = ["include 'methods/lora.gin'", f"LORA_RANK = {rank}", f"LORA_ALPHA = {alpha!r}",
               f"LORA_DROPOUT = {dropout!r}", f"LORA_TARGETS = {targets!r}"]
  return flat, gin_lines


def _prompt_params(config, tensors, path):
  length = _int_field(config, "num_virtual_tokens", path)
  rows = tensors.get("prompt_embeddings")
  if rows is None or rows.ndim != 2 or rows.shape[0] < length:
    raise PeftError(f"{path}: expected prompt_embeddings [num_virtual_tokens * n, token_dim] "
                    f"with num_virtual_tokens = {length}, got "
                    f"{None if rows is None else list(rows.shape)}")
  # PeftModelForSeq2SeqLM.forward and generate prepend rows [0, P) to the
  # encoder input; the further rows (num_transformer_submodules = 2) are unused.
  prompt = np.asarray(rows[:length], np.float32)
  return {PROMPT_PARAM: prompt}, [f"PROMPT_LENGTH = {length}"]


def _prefix_params(config, tensors, path):
  length = _int_field(config, "num_virtual_tokens", path)
  layers = _int_field(config, "num_layers", path)
  dim = _int_field(config, "token_dim", path)
  heads = _int_field(config, "num_attention_heads", path)
  if dim % heads:
    raise PeftError(f"{path}: token_dim {dim} is not a multiple of num_attention_heads {heads}")
  if config.get("num_transformer_submodules") not in (None, 2):
    raise PeftError(f"{path}: num_transformer_submodules is "
                    f"{config.get('num_transformer_submodules')!r}; PEFT runs T5 prefixes only "
                    "with 2 (its seq2seq default)")
  rows = tensors.get("prompt_embeddings")
  if rows is None or tuple(rows.shape) != (length, layers * 2 * dim):
    raise PeftError(f"{path}: expected prompt_embeddings [num_virtual_tokens, num_layers * 2 * "
                    f"token_dim] = {[length, layers * 2 * dim]}, got "
                    f"{None if rows is None else list(rows.shape)}")
  rows = np.asarray(rows, np.float32)
  block = lambda j: rows[:, j * dim:(j + 1) * dim]
  flat = {}
  for i, (key, value) in enumerate(prefix_blocks(layers)):
    flat[f"decoder/layers_{i}/self_attention/prefix/key"] = block(key)
    flat[f"decoder/layers_{i}/self_attention/prefix/value"] = block(value)
  gin_lines = [f"# PEFT: {layers} decoder layers, {heads} heads x {dim // heads} = token_dim {dim}",
               "include 'methods/prefix_peft.gin'", f"PREFIX_LENGTH = {length}"]
  return flat, gin_lines


def prefix_blocks(layers: int):
  """[(key block, value block)] that decoder layer i reads of PEFT's T5 prefix
  rows [l, 2 * layers * D], in blocks of D columns.

  PEFT (get_prompt, num_transformer_submodules = 2) views the rows as 2L
  blocks, concatenates them with themselves (4L blocks), splits that into
  chunks of 4 (self key, self value, cross key, cross value) per layer and
  then empties the cross-attention cache: layer i reads blocks 4i and 4i + 1
  modulo 2L. With an even layer count (every released T5), layers i and
  i + L/2 therefore share a prefix and the blocks 2, 3 (mod 4) are never read.
  Checked against PEFT 0.21.2's scores (tests/make_peft_reference.py).
  """
  return [((4 * i) % (2 * layers), (4 * i + 1) % (2 * layers)) for i in range(layers)]


_IMPORTERS = {"LORA": _lora_params, "PROMPT_TUNING": _prompt_params,
              "PREFIX_TUNING": _prefix_params}


def check_out_dir(out_dir: str, what: str) -> None:
  if file_utils.exists(out_dir) and (not file_utils.isdir(out_dir)
                                     or file_utils.listdir(out_dir)):
    raise PeftError(f"{what} {out_dir} exists and is not an empty folder: give a new folder "
                    "(nothing is overwritten)")
  problem = file_utils.folder_problem(out_dir)
  if problem:
    raise PeftError(f"{what} {out_dir} {problem}")


def import_adapter(adapter_dir: str, out_dir: str) -> Dict[str, np.ndarray]:
  """Converts a PEFT adapter folder into a numpy checkpoint folder `out_dir`
  (with method.gin); returns the flat parameters written."""
  from prompt_tuning.storage import numpy_checkpoints  # pylint: disable=g-import-not-at-top
  check_out_dir(out_dir, "OUT_DIR")
  config, tensors = read_adapter(adapter_dir)
  path = os.path.join(adapter_dir, CONFIG_FILE)
  peft_type = config.get("peft_type")
  if not isinstance(peft_type, str) or peft_type not in _IMPORTERS:
    raise PeftError(f"{path}: peft_type {peft_type!r} is not convertible (LORA, PROMPT_TUNING "
                    "and PREFIX_TUNING are)")
  _check_seq2seq(config, path)
  flat, gin_lines = _IMPORTERS[peft_type](config, tensors, path)
  method_gin = "\n".join(
      [f"# Imported by pt-import-peft from {_comment(adapter_dir)} ({peft_type}, PEFT "
       f"{_comment(config.get('peft_version', 'unknown'))}, base model "
       f"{_comment(config.get('base_model_name_or_path'))}).",
       "# Evaluate with: pt-eval <model gin> --gin_file=runs/prompt_eval.gin "
       f"--gin_file={_comment(os.path.join(out_dir, METHOD_GIN))} "
       f"--gin.PROMPT_FILE=\"'{_comment(out_dir)}'\""]
      + gin_lines) + "\n"
  numpy_checkpoints.write_folder(out_dir, flat, {
      METHOD_GIN: method_gin.encode("utf-8"),
      RECORD_FILE: json.dumps(config, indent=2, sort_keys=True).encode("utf-8")})
  return flat


# ---------------------------------------------------------------- export


def _method_of(model):
  """The model's prompt module and `methods.Methods` parts."""
  from prompt_tuning import methods  # pylint: disable=g-import-not-at-top
  module = model.module
  sites = module.sites
  parts = sites.parts if isinstance(sites, methods.Methods) else ()
  return module.prompt, {type(p).__name__: p for p in parts}


def peft_tensors(model, flat: Dict[str, np.ndarray], base_model: Optional[str] = None):
  """(adapter_config dict, tensors) of the PEFT adapter equal to a run's
  trained parameters `flat` under `model`."""
  from prompt_tuning.methods import prompts  # pylint: disable=g-import-not-at-top
  cfg = model.module.config
  prompt, parts = _method_of(model)
  kinds = sorted({"prompt" if n.startswith("encoder/prompt/") else
                  "lora" if "/lora/" in n else "prefix" if "/prefix/" in n else
                  "adapter" if "_adapter/" in n else n for n in flat})
  if len(kinds) != 1:
    raise PeftError(f"this run trains {' + '.join(kinds)}; a PEFT adapter folder holds one "
                    "method: export runs of one method (prompt, LoRA or prefix)")
  kind, = kinds
  common = {"base_model_name_or_path": base_model, "revision": None, "inference_mode": True,
            "task_type": "SEQ_2_SEQ_LM", "auto_mapping": None}
  if kind == "prompt":
    if set(flat) != {PROMPT_PARAM} or not isinstance(prompt, prompts.Prompt):
      raise PeftError(f"this run's prompt ({type(prompt).__name__}: {sorted(flat)}) has no PEFT "
                      "equivalent: PEFT prompt tuning is one [P, d] prompt (SMoP is not)")
    rows = np.asarray(flat[PROMPT_PARAM], np.float32)
    config = dict(common, peft_type="PROMPT_TUNING", num_virtual_tokens=int(rows.shape[0]),
                  token_dim=int(rows.shape[1]), num_transformer_submodules=1,
                  num_attention_heads=cfg.num_heads, num_layers=cfg.num_encoder_layers,
                  prompt_tuning_init="RANDOM", prompt_tuning_init_text=None,
                  tokenizer_name_or_path=None, tokenizer_kwargs=None)
    return config, {"prompt_embeddings": rows}
  if kind == "lora":
    lora = parts.get("LoRAMethod")
    tensors, targets = {}, set()
    for name, value in flat.items():
      stack, block, sublayer, proj, which = _OUR_LORA.match(name).groups()
      hf_sublayer = _HF_SUBLAYER[(stack, sublayer)]
      key = (f"base_model.model.{stack}.block.{block}.layer.{hf_sublayer}."
             f"{_HF_PROJECTION[proj]}.lora_{which.upper()}.weight")
      tensors[key] = np.ascontiguousarray(np.asarray(value, np.float32).T)
      targets.add(_HF_PROJECTION[proj])
    config = dict(common, peft_type="LORA", r=lora.rank, lora_alpha=lora.alpha,
                  lora_dropout=lora.dropout_rate, target_modules=sorted(targets),
                  bias="none", fan_in_fan_out=False, use_rslora=False, use_dora=False,
                  init_lora_weights=True, modules_to_save=None, layers_to_transform=None,
                  layers_pattern=None, rank_pattern={}, alpha_pattern={})
    return config, tensors
  if kind == "prefix":
    prefix = parts.get("PrefixMethod")
    if prefix is None or not prefix.positioned:
      raise PeftError("this run's prefixes are placed as He et al. place them (every attention, "
                      "no position); PEFT's T5 prefixes sit in the decoder's self-attention "
                      "with positions: only runs with methods/prefix_peft.gin export")
    if cfg.num_encoder_layers != cfg.num_decoder_layers:
      raise PeftError("PEFT sizes T5 prefixes by the encoder's layer count; this model's "
                      "decoder has a different one")
    dim = cfg.num_heads * cfg.head_dim
    layers = cfg.num_decoder_layers
    blocks = [None] * (2 * layers)
    for i, pair in enumerate(prefix_blocks(layers)):
      rows = _fold_prefix({n.rsplit("/", 1)[1]: np.asarray(v, np.float32)
                           for n, v in flat.items()
                           if n.startswith(f"decoder/layers_{i}/self_attention/prefix/")}, dim)
      for j, value in zip(pair, rows):
        if blocks[j] is not None and not np.array_equal(blocks[j], value):
          shared = i - layers // 2
          raise PeftError(
              f"PEFT's T5 prefix tuning gives decoder layers {shared} and {i} one prefix (its "
              "seq2seq cache layout); this run's differ, so no PEFT adapter reproduces it "
              "(runs imported from PEFT export)")
        blocks[j] = value
    blocks = [np.zeros((prefix.length, dim), np.float32) if b is None else b for b in blocks]
    columns = blocks
    config = dict(common, peft_type="PREFIX_TUNING", num_virtual_tokens=prefix.length,
                  token_dim=dim, num_attention_heads=cfg.num_heads,
                  num_layers=cfg.num_decoder_layers, encoder_hidden_size=dim,
                  prefix_projection=False, num_transformer_submodules=2)
    return config, {"prompt_embeddings": np.concatenate(columns, axis=1)}
  raise PeftError(f"this run trains {kind} parameters ({sorted(flat)[0]}, ...): PEFT has no "
                  "equivalent for T5 (prompt, LoRA and PEFT-placed prefix runs export)")


def _fold_prefix(params, dim):
  """Key and value rows [l, dim] of one attention's prefix (through the
  reparameterisation MLP when the run used one: methods.Prefix)."""
  if "key" in params:
    return params["key"], params["value"]
  rows = np.tanh(params["embedding"] @ params["hidden"]) @ params["out"]
  return rows[:, :dim], rows[:, dim:]


def write_adapter(out_dir: str, config: dict, tensors: Dict[str, np.ndarray]) -> None:
  """Writes an adapter folder atomically (adapter_config.json +
  adapter_model.safetensors, as PEFT's save_pretrained)."""
  tmp = file_utils.temp_sibling(out_dir)
  file_utils.makedirs(tmp)
  file_utils.write_text_atomic(os.path.join(tmp, CONFIG_FILE),
                               json.dumps(config, indent=2, sort_keys=True) + "\n")
  safetensors_io.save(os.path.join(tmp, WEIGHTS_FILE), tensors, {"format": "pt"})
  if file_utils.exists(out_dir):  # an empty folder (checked)
    file_utils.remove_tree(out_dir)
  file_utils.rename(tmp, out_dir)
