"""What every parameter-efficient method shares: the names of the sites it
fills, its errors, the combination of several methods (`Methods`, one per
slot, as gin/methods/*.gin bind them) and the count of trainable parameters.
Each method is its own module of this package (lora, prefix, adapter; the
prompt and SMoP are prompts and smop)."""
import dataclasses
from typing import Optional

import jax

from prompt_tuning.model import layers

# What the jobs train by default, when no run file binds TRAINABLE_PARAMS: the prompt.
DEFAULT_TRAINABLE = ("encoder/prompt/.*",)
# Every method's parameters, by their names (T5X's frozen names never match):
# the `TRAINABLE_PARAMS` of gin/runs/*.gin. Patterns that match no parameter of
# a model (e.g. LoRA's in plain prompt tuning) select nothing.
TRAINABLE_PARAMS = ("encoder/prompt/.*", ".*/lora/.*", ".*/prefix/.*", ".*_adapter/.*")

ATTENTIONS = ("encoder/attention", "decoder/self_attention",
              "decoder/encoder_decoder_attention")
SUBLAYERS = ATTENTIONS + ("encoder/mlp", "decoder/mlp")
PROJECTIONS = ("query", "key", "value", "out", "wi", "wi_0", "wi_1", "wo")
# Prefixes longer than this are refused: the paper's longest is 200 (Li and
# Liang, 2021); a longer one is almost surely a typo, and costs memory in every
# attention of every layer.
MAX_PREFIX_LENGTH = 1024


class MethodError(ValueError):
  """A bad method setting (rank, length, target, scaling); says what to fix."""


def sublayer_names(names, allowed, what):
  """Expands 'attention' to every attention of both stacks; checks the names."""
  out = []
  for name in names:
    matched = [s for s in allowed if s == name or s.split("/")[-1] == name
               or (name == "attention" and s in ATTENTIONS)]
    if not matched:
      raise MethodError(f"{what}: unknown sublayer {name!r} (choose from 'attention', "
                        f"{', '.join(repr(s.split('/')[-1]) for s in SUBLAYERS[1:])} or "
                        "a '{stack}/{sublayer}' name)")
    out += matched
  return tuple(sorted(set(out)))


@dataclasses.dataclass(frozen=True)
class Methods(layers.Sites):
  """The methods a run combines, one per slot (gin/methods/*.gin each bind one):
  each site is filled by the one method that fills it."""
  lora: Optional[layers.Sites] = None
  prefix_tuning: Optional[layers.Sites] = None
  adapters: Optional[layers.Sites] = None

  @property
  def parts(self):
    return tuple(p for p in (self.lora, self.prefix_tuning, self.adapters)
                 if p is not None)

  def _one(self, kind, where):
    found = [f for f in (getattr(p, kind)(where) for p in self.parts) if f is not None]
    return found[0] if found else None

  def projection(self, where):
    return self._one("projection", where)

  def prefix(self, where):
    return self._one("prefix", where)

  def adapter(self, where):
    return self._one("adapter", where)

  def prefix_positions(self, where):
    return max([p.prefix_positions(where) for p in self.parts] + [0])


# ---------------------------------------------------------------- counting


def count(tree) -> int:
  return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


def describe_counts(trainable, frozen) -> str:
  """'trainable parameters: N (x% of the frozen model's M)'."""
  n, m = count(trainable), count(frozen)
  return (f"trainable parameters: {n:,} ({100.0 * n / max(m, 1):.4g}% of the frozen "
          f"model's {m:,})")
