"""Plain functions over parameter pytrees: flatten, split trainable/frozen, merge."""
import re
from typing import Iterable, Mapping

import flax


def flatten(tree, sep="/", is_leaf=None):
  """{'a': {'b': x}} -> {'a/b': x} (FrozenDicts and boxed params accepted);
  `is_leaf(path, subtree)` keeps a matching dict whole (as one leaf)."""
  return flax.traverse_util.flatten_dict(tree, is_leaf=is_leaf, sep=sep)


def unflatten(flat, sep="/"):
  return flax.traverse_util.unflatten_dict(dict(flat), sep=sep)


def matches(name: str, patterns: Iterable[str]) -> bool:
  return any(re.fullmatch(p, name) for p in patterns)


def split(params, trainable_patterns):
  """Splits a tree into (trainable, frozen) by regexes over '/'-joined names."""
  flat = flatten(params)
  trainable = {k: v for k, v in flat.items() if matches(k, trainable_patterns)}
  frozen = {k: v for k, v in flat.items() if k not in trainable}
  return unflatten(trainable), unflatten(frozen)


def merge(*trees):
  """Deep-merges disjoint nested dicts (trainable and frozen parts of one model)."""
  out = {}
  for tree in trees:
    for name, value in flatten(tree).items():
      if name in out:
        raise ValueError(f"parameter {name} is both trainable and frozen")
      out[name] = value
  return unflatten(out)


def shapes(tree) -> Mapping[str, tuple]:
  return {k: tuple(v.shape) for k, v in flatten(tree).items()}
