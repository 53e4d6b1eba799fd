"""Several prompts on one frozen model in one jitted call.

Two layouts, both by `jax.vmap` over the trainable parameters with the frozen
ones shared (closed over, so each weight matmul stays one matmul over all rows
of all prompts and the frozen weights are read once per call):

- `per_member`: N prompts (an ensemble) stacked on a leading axis; a
  function of (params, batch) runs for every member on the same batch, and
  its outputs get a leading member axis [N, b, ...].
- `per_example`: a table of prompts [T, ...] (one per task) and a task index
  per example; each example runs under its own task's prompt, gathered from
  the table (`gather_rows`) inside the jitted function.

The per-prompt function is exactly the single-prompt computation (the
encoder with the prompt, then decoding), so every trainable parameter a
method adds, in the encoder or the decoder, follows its prompt.
`majority_vote` combines the members' predictions.
"""
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.methods import smop
from prompt_tuning.model import t5
from prompt_tuning.storage import trees


def stack_trees(tree_list):
  """Numpy trees of equal structure -> one tree with a leading axis."""
  flats = [trees.flatten(tree) for tree in tree_list]
  return trees.unflatten({name: np.stack([np.asarray(f[name]) for f in flats])
                          for name in flats[0]})


def per_member(fn, stacked, frozen, *args):
  """fn(params, *args) under every member of `stacked`: outputs [N, ...]."""
  return jax.vmap(lambda trainable: fn(trees.merge(trainable, frozen), *args))(stacked)


def gather_rows(table, task_index):
  """Each example's row of a table of trainable trees [T, ...] -> [b, ...]."""
  return jax.tree_util.tree_map(lambda t: jnp.take(t, task_index, axis=0), table)


def per_example(fn, rows, frozen, *args):
  """fn(params, *args) for each example under its own trainable row (`rows`,
  from gather_rows): fn sees a batch of one, the outputs are [b, ...]."""
  def one(trainable, *example):
    out = fn(trees.merge(trainable, frozen),
             *jax.tree_util.tree_map(lambda x: x[None], example))
    return jax.tree_util.tree_map(lambda x: x[0], out)

  return jax.vmap(one)(rows, *args)


def encode(model, params, tokens):
  """(encoded, mask, SMoP routing index [b], zeros for other prompts)."""
  if not smop.is_smop(model):
    encoded, mask = model.encode(params, tokens)
    return encoded, mask, jnp.zeros(tokens.shape[:1], jnp.int32)
  (encoded, mask), state = model.module.apply(
      {"params": params}, tokens, method=t5.Transformer.encode, mutable=["intermediates"])
  return encoded, mask, smop.find(state["intermediates"], "routing_index")


def label_log_likelihoods(model, params, encoded, mask, label_ids):
  """[b, K] log-likelihood of each label given the encoder outputs (the
  computation of evaluation.make_rank_fn).

  `label_ids`: [K, T] shared by every row, or [b, K, T] per row (zero-padded,
  each label followed by EOS; evaluation.label_token_ids).
  """
  scores = []
  for k in range(label_ids.shape[-2]):
    targets = label_ids[..., k, :]
    if targets.ndim == 1:
      targets = jnp.broadcast_to(targets, (encoded.shape[0], targets.shape[0]))
    scores.append(model.sequence_log_likelihood(params, encoded, mask, targets))
  return jnp.stack(scores, axis=-1)


def majority_vote(same, summed):
  """The winning member of each example: most votes, ties to the higher summed score.

  Runs in numpy for numpy inputs (on the host), else in jax.numpy (in jit).

  Args:
    same: [b, N, N] bool, same[e, i, j]: members i and j predict the same for
      example e.
    summed: [b, N], the summed score (over all members) of member j's
      prediction; compared only between predictions with equally many votes.

  Returns:
    (winner [b]: a member whose prediction is the ensemble's, the first such
    member on an exact tie; votes [b, N]: how many members predict what member
    j predicts; tie [b]: more than one distinct prediction has the most votes).
  """
  xp = np if isinstance(same, np.ndarray) and isinstance(summed, np.ndarray) else jnp
  same = xp.asarray(same, bool)
  votes = xp.sum(same, axis=1)
  top = votes == xp.max(votes, axis=-1, keepdims=True)
  finite = xp.nan_to_num(xp.asarray(summed, xp.float32), nan=-3e38, neginf=-3e38, posinf=3e38)
  winner = xp.argmax(xp.where(top, finite, -xp.inf), axis=-1)
  n = same.shape[-1]
  earlier = xp.triu(xp.ones((n, n), bool), 1)  # earlier[i, j]: i < j
  first = ~xp.any(same & earlier[None], axis=1)  # member j is its prediction's first voter
  return winner, votes, xp.sum(top & first, axis=-1) > 1
