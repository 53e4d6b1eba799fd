"""The unified parameter-efficient family of He et al. (ICLR 2022), on the
frozen T5: prefix tuning, sequential and parallel adapters, LoRA, and their
combinations (the MAM adapter), each filling the layers' named sites
(`layers.Sites`) without touching the frozen model's T5X parameter names.

A method is a frozen dataclass (hashable, so the model stays a valid static jit
argument) that answers `projection`, `prefix` and `adapter` for each site with
a module factory, or None. gin binds one per slot of `Methods` (gin/methods/):
listing two method files combines them. Parameters, always float32 and all
trainable (`TRAINABLE_PARAMS` matches exactly these names):

  LoRA      .../{query,key,value,out,wi,wi_0,wi_1,wo}/lora/a  [in, r]   (A)
            .../{...}/lora/b                                 [r, out]  (B, zeros)
  prefix    .../{attention,self_attention,encoder_decoder_attention}/prefix/key, value
                                                            [l, heads*head_dim]
            (with an MLP reparameterisation instead .../prefix/embedding [l, d],
            .../prefix/hidden [d, m], .../prefix/out [m, 2*heads*head_dim])
  adapters  {stack}/layers_{i}/{sublayer}_adapter/down [d, r], up [r, d] (zeros)

Bad settings raise `MethodError` when gin builds the method (before pt-train
writes MODEL_DIR), printed as one `pt-train: error:` line.

The methods are found by name, one module each (`names()`, `get(name)`):
lora, prefix, adapter here, the soft prompt in `prompts` and SMoP in `smop`.
This package exports the classes gin binds and the shared names of `sites`.
"""
import importlib

from prompt_tuning.methods.adapter import Adapter, AdapterMethod
from prompt_tuning.methods.lora import LoRA, LoRAMethod, lora_a_init
from prompt_tuning.methods.prefix import Prefix, PrefixMethod
from prompt_tuning.methods.sites import (ATTENTIONS, MAX_PREFIX_LENGTH, PROJECTIONS, SUBLAYERS,
                                         TRAINABLE_PARAMS, MethodError, Methods, count,
                                         describe_counts)

METHODS = ("lora", "prefix", "adapter", "prompts", "smop")


def names() -> tuple:
  """The method modules, by name."""
  return METHODS


def get(name: str):
  """The module of method `name` (see `names()`)."""
  if name not in METHODS:
    raise MethodError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
  return importlib.import_module(f"prompt_tuning.methods.{name}")


def eval_metrics_fn(model):
  """What the model's method adds to each task's evaluation metrics, as
  `fn(model, params, batches) -> {metric: value}` (`batches` yields (global
  index, sharded features) pairs of the task's eval data), or None. SMoP adds
  the share of examples routed to each prompt (`routing/prompt_i`)."""
  from prompt_tuning.methods import smop  # pylint: disable=g-import-not-at-top
  return smop.eval_metrics if smop.is_smop(model) else None
