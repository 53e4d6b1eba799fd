"""Prompt ensembles in pt-eval: N prompts on one frozen model, one batched pass.

`PROMPT_FILES = ['a.npy', 'run2/numpy_checkpoints/checkpoint_300', ...]` (each
entry a .npy prompt or a numpy checkpoint folder; SMoP checkpoints with
prompts/smop.gin, all members of one kind) evaluates every member and their
majority vote. Per batch, one jitted call encodes the examples under every
member (`multiprompt.encode_members`: jax.vmap over the stacked prompts, the
frozen weights shared) and decodes all members' rows together, then votes.

Voting: each member votes for its prediction (its best label with rank
classification, its decoded output string with greedy decoding: token
sequences that decode alike agree); the prediction with the most votes wins.
Among predictions with equally many votes the one with the higher summed score
wins: the sum over all members of its log-likelihood (rank: the summed label
log-likelihood; greedy: each member's sequence is scored under every member,
by a second jitted call made only for batches that hold a tie). Tasks with
score metrics get each member's target log-likelihood, and for the ensemble
the log of the members' mean likelihood.

Output, in EVAL_OUTPUT_DIR:

  member_{i}/...                         what pt-eval writes for prompt i alone
                                         ({task}-metrics.jsonl, {task}-{step:06}.jsonl,
                                         -label_scores.jsonl, routing for SMoP)
  ensemble/{task}-metrics.jsonl          the ensemble's metrics (seqio JSONLogger)
  ensemble/{task}-{step:06}.jsonl        its predictions
  ensemble/{task}-{step:06}-votes.jsonl  per example: input, target, prediction,
                                         votes (each member's prediction), tie,
                                         summed_scores (when computed)
  ensemble_summary.json                  the members (source, step) and every
                                         member's and the ensemble's metrics

and a table of the metrics side by side is printed. The ensemble is logged at
the members' step when they share one, else at step 0.
"""
import dataclasses
import json
import os
import time
from typing import Any, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from prompt_tuning.evaluation import seqio_eval
from prompt_tuning.evaluation import trained
from prompt_tuning.methods import initializers
from prompt_tuning.methods import multiprompt
from prompt_tuning.methods import smop
from prompt_tuning.model import partitioning
from prompt_tuning import progress
from prompt_tuning.storage import file_utils
from prompt_tuning.storage import numpy_checkpoints
from prompt_tuning.storage import t5x_checkpoints
from prompt_tuning.storage import trees
from prompt_tuning import tables

ENSEMBLE = "ensemble"
SMOP_FILE = numpy_checkpoints.param_filename("encoder/prompt/router/kernel")


@dataclasses.dataclass
class Member:
  params: Any  # the trainable tree
  step: int
  source: str


def member_name(i: int) -> str:
  return f"member_{i}"


def _label(i, path):
  return f"PROMPT_FILES[{i}] {path}"


def _kind(path: str) -> Optional[str]:
  """'smop' or 'plain' from the files (None when unreadable: loading reports it)."""
  try:
    if path.endswith(".npy"):
      return "smop" if file_utils.load_npy(path).ndim == 3 else "plain"
    if file_utils.exists(os.path.join(path, SMOP_FILE)):
      return "smop"
    if file_utils.exists(os.path.join(path, numpy_checkpoints.param_filename(
        "encoder/prompt/prompt"))):
      return "plain"
  except (ValueError, OSError):
    pass
  return None


def load_members(abstract_trainable, model, prompt_file, prompt_files) -> list:
  """Every member's trainable parameters, checked; one clear error naming a bad member."""
  if prompt_file:
    raise initializers.PromptInitError(
        f"set PROMPT_FILE or PROMPT_FILES, not both (PROMPT_FILE is {prompt_file}): "
        "put every prompt in PROMPT_FILES")
  if isinstance(prompt_files, str) or not isinstance(prompt_files, (list, tuple)):
    raise initializers.PromptInitError(
        f"PROMPT_FILES must be a list of paths, got {prompt_files!r}: e.g. "
        "--gin.PROMPT_FILES=\"['a.npy', 'run2/numpy_checkpoints/checkpoint_300']\"")
  if not prompt_files:
    raise initializers.PromptInitError("PROMPT_FILES is empty: list at least one prompt "
                                       "(.npy or numpy checkpoint folder)")
  for i, path in enumerate(prompt_files):
    if not isinstance(path, str) or not path:
      raise initializers.PromptInitError(f"PROMPT_FILES[{i}] is {path!r}: give the path of a "
                                         ".npy prompt or of a numpy checkpoint folder")
  kinds = {i: _kind(path) for i, path in enumerate(prompt_files)}
  by_kind = {k: [i for i, v in kinds.items() if v == k] for k in ("smop", "plain")}
  if by_kind["smop"] and by_kind["plain"]:
    names = lambda ids: ", ".join(_label(i, prompt_files[i]) for i in ids)
    raise initializers.PromptInitError(
        f"PROMPT_FILES mixes SMoP checkpoints ({names(by_kind['smop'])}) and plain prompts "
        f"({names(by_kind['plain'])}): the members of an ensemble must be of one kind")
  model_kind = "smop" if smop.is_smop(model) else "plain"
  for i, kind in kinds.items():
    if kind == "smop" and model_kind == "plain":
      raise initializers.PromptInitError(
          f"{_label(i, prompt_files[i])} is a SMoP prompt but the model has a plain prompt: add "
          "--gin_file=prompts/smop.gin after the model's gin file")
    if kind == "plain" and model_kind == "smop":
      raise initializers.PromptInitError(
          f"{_label(i, prompt_files[i])} is a plain prompt but the model is SMoP "
          "(prompts/smop.gin): give SMoP numpy checkpoint folders, or drop prompts/smop.gin")
  members = []
  for i, path in enumerate(prompt_files):
    try:
      members.append(Member(*trained.load_trainable(abstract_trainable, path, None)))
    except (initializers.PromptInitError, t5x_checkpoints.CheckpointError) as e:
      raise initializers.PromptInitError(f"{_label(i, path)}: {_first_line(e)}") from None
  return members


def _first_line(e):
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


# ------------------------------------------------------------- the batched pass


def _greedy_fn(model, length):
  """(stacked, frozen, batch) -> ({every member's greedy tokens [b, N, L], SMoP
  routing [b, N]}, the encoder outputs [N, b, ...] for `_summed_scores_fn`)."""
  def fn(stacked, frozen, batch):
    def member(params):
      encoded, mask, route = multiprompt.encode(model, params, batch["encoder_input_tokens"])
      return model.greedy_decode(params, encoded, mask, length)[0], encoded, mask, route

    tokens, encoded, mask, route = multiprompt.per_member(member, stacked, frozen)
    return {"tokens": jnp.transpose(tokens, (1, 0, 2)), "route": route.T}, (encoded, mask)
  return fn


def _summed_scores_fn(model):
  """(stacked, frozen, encoded, mask, tokens [b, N, L]) -> [b, N]: member j's
  sequence scored under every member, summed (greedy tie-breaking)."""
  def fn(stacked, frozen, encoded, mask, tokens):
    def scores(trainable, encoded, mask):
      params = trees.merge(trainable, frozen)
      return jnp.stack([model.sequence_log_likelihood(params, encoded, mask, tokens[:, j])
                        for j in range(tokens.shape[1])])
    return jnp.sum(jax.vmap(scores)(stacked, encoded, mask), axis=0).T
  return fn


def _rank_fn(model, label_ids):
  """(stacked, frozen, batch) -> every member's label scores and the vote."""
  label_ids = jnp.asarray(label_ids)

  def fn(stacked, frozen, batch):
    def member(params):
      encoded, mask, route = multiprompt.encode(model, params, batch["encoder_input_tokens"])
      return multiprompt.label_log_likelihoods(model, params, encoded, mask, label_ids), route

    scores, route = multiprompt.per_member(member, stacked, frozen)  # [N, b, K], [N, b]
    best = jnp.argmax(scores, axis=-1)  # [N, b]
    same = jnp.transpose(best[:, None] == best[None, :], (2, 0, 1))
    summed = jnp.take_along_axis(jnp.sum(scores, axis=0), best.T, axis=-1)  # [b, N]
    winner, votes, tie = multiprompt.majority_vote(same, summed)
    return {"label_scores": jnp.transpose(scores, (1, 0, 2)), "winner": winner, "votes": votes,
            "tie": tie, "summed": summed, "route": route.T}
  return fn


def _score_fn(model):
  """(stacked, frozen, batch) -> [b, N] every member's target log-likelihood."""
  def fn(stacked, frozen, batch):
    def member(params):
      encoded, mask, _ = multiprompt.encode(model, params, batch["encoder_input_tokens"])
      return model.sequence_log_likelihood(params, encoded, mask, batch["decoder_target_tokens"],
                                           batch["decoder_input_tokens"])
    return multiprompt.per_member(member, stacked, frozen).T
  return fn


@dataclasses.dataclass
class TaskOutputs:
  """One task's results for every member and the ensemble."""
  predictions: dict  # view name -> [(index, token ids)]
  votes: list  # per example: {'index', 'votes', 'tie', 'summed_scores'?}, votes as strings
  label_scores: Optional[dict] = None  # member name -> [(index, [K] scores)]
  labels: Optional[list] = None
  routing: Optional[np.ndarray] = None  # [N, k] routing fractions (SMoP)


class Ensemble:
  """Runs the members over each task's eval dataset (one pass per batch) and
  serves each member's and the ensemble's outputs to seqio's Evaluator."""

  def __init__(self, model, members, frozen, batch_size, mesh, decode_len, decoding,
               evaluator):
    self.model, self.frozen, self.batch_size, self.mesh = model, frozen, batch_size, mesh
    self.n = len(members)
    self.stacked = partitioning.replicate(
        mesh, multiprompt.stack_trees([jax.device_get(m.params) for m in members]))
    self.decode_len, self.decoding, self.evaluator = decode_len, decoding, evaluator
    self._task_of = {id(ds): name for name, ds in evaluator.cached_model_datasets.items()}
    self._outputs, self._scores = {}, {}

  def _run(self, fn, ds, finish=None):
    """[(index, row of fn's outputs)] over a dataset; `finish(outputs, device
    extras, real rows)` completes each batch's (gathered) outputs on the host."""
    out = []
    count = int(ds.cardinality())
    done = progress.counter("eval", f"{self._task_of.get(id(ds), 'task')}, {self.n} prompts",
                            count if count >= 0 else None, "examples",
                            enabled=jax.process_index() == 0)
    for index, feats in seqio_eval.batches(ds, self.batch_size, self.mesh):
      result = fn(self.stacked, self.frozen, partitioning.shard_batch(self.mesh, feats))
      result, extras = result if isinstance(result, tuple) else (result, None)
      result = jax.tree_util.tree_map(partitioning.gather, result)
      index = seqio_eval.global_index(self.mesh, index)
      if finish is not None:
        result = finish(result, extras, index >= 0)
      rows = [i for i, v in enumerate(index.tolist()) if v >= 0]
      out.extend((int(index[r]), jax.tree_util.tree_map(lambda x, r=r: x[r], result))
                 for r in rows)
      done(len(out))
    return out

  def _vote_on_strings(self, vocabulary):
    """The greedy vote: members agree when their outputs decode to the same
    string; ties are scored (a second jitted call) only in batches that hold one."""
    summed_fn = seqio_eval.jitted((self.model, "ensemble", "summed"),
                                  lambda: _summed_scores_fn(self.model))

    def finish(result, extras, real):
      strings = [[vocabulary.decode(t.tolist()) for t in row] for row in result["tokens"]]
      same = np.asarray([[[a == b for b in row] for a in row] for row in strings])
      summed = np.zeros(same.shape[:2], np.float32)
      tie = multiprompt.majority_vote(same, summed)[2] & real
      if np.any(tie):
        summed = partitioning.gather(summed_fn(self.stacked, self.frozen, *extras,
                                               result["tokens"]))
      winner, votes, tie = multiprompt.majority_vote(same, np.asarray(summed, np.float32))
      return {**result, "strings": np.asarray(strings, object), "winner": winner,
              "votes": votes, "tie": tie, "summed": summed}
    return finish

  def _labels(self, task_name):
    if self.decoding == "greedy":
      return None
    from prompt_tuning.tasks import labels  # pylint: disable=g-import-not-at-top
    found = labels.get_class_labels(task_name)
    if not found and self.decoding == "rank":
      logging.warning("%s has no class labels: decoding greedily", task_name)
    return found

  def outputs(self, task_name) -> TaskOutputs:
    if task_name not in self._outputs:
      self._outputs[task_name] = self._compute(task_name)
    return self._outputs[task_name]

  def _compute(self, task_name) -> TaskOutputs:
    ds = self.evaluator.cached_model_datasets[task_name]
    vocabulary = seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary
    label_strings = self._labels(task_name)
    names = [member_name(i) for i in range(self.n)]
    predictions = {name: [] for name in names + [ENSEMBLE]}
    votes = []
    if label_strings:
      ids = seqio_eval.label_token_ids(vocabulary, label_strings)
      fn = seqio_eval.jitted((self.model, "ensemble", "rank", self.n, ids.tobytes(), ids.shape),
                   lambda: _rank_fn(self.model, ids))
      rows = self._run(fn, ds)
      label_scores = {name: [] for name in names}
      for index, row in rows:
        best = [int(np.argmax(s)) for s in row["label_scores"]]
        for name, s, k in zip(names, row["label_scores"], best):
          predictions[name].append((index, ids[k].tolist()))
          label_scores[name].append((index, s))
        predictions[ENSEMBLE].append((index, ids[best[int(row["winner"])]].tolist()))
        votes.append({"index": index, "votes": [label_strings[k] for k in best],
                      "tie": bool(row["tie"]),
                      "summed_scores": [float(s) for s in row["summed"]]})
      result = TaskOutputs(predictions, votes, label_scores, list(label_strings))
    else:
      fn = seqio_eval.jitted((self.model, "ensemble", "greedy", self.decode_len),
                   lambda: _greedy_fn(self.model, self.decode_len))
      rows = self._run(fn, ds, self._vote_on_strings(vocabulary))
      for index, row in rows:
        for name, tokens in zip(names, row["tokens"]):
          predictions[name].append((index, tokens.tolist()))
        predictions[ENSEMBLE].append((index, row["tokens"][int(row["winner"])].tolist()))
        entry = {"index": index, "votes": list(row["strings"]), "tie": bool(row["tie"])}
        if row["tie"]:
          entry["summed_scores"] = [float(s) for s in row["summed"]]
        votes.append(entry)
      result = TaskOutputs(predictions, votes)
    if smop.is_smop(self.model):
      routes = np.stack([row["route"] for _, row in rows], axis=1)  # [N, examples]
      k = self.model.module.prompt.num_prompts
      result.routing = np.stack([np.bincount(r, minlength=k) / max(r.size, 1) for r in routes])
    return result

  def predict_fn(self, view):
    def predict(ds, *unused_args):
      return self.outputs(self._task_of[id(ds)]).predictions[view]
    return predict

  def score_fn(self, view):
    def score(ds, *unused_args):
      task_name = self._task_of[id(ds)]
      if task_name not in self._scores:
        fn = seqio_eval.jitted((self.model, "ensemble", "score"), lambda: _score_fn(self.model))
        self._scores[task_name] = self._run(fn, ds)
      rows = self._scores[task_name]
      if view == ENSEMBLE:  # log of the members' mean likelihood
        return [(i, float(np.logaddexp.reduce(np.asarray(s, np.float64)) - np.log(self.n)))
                for i, s in rows]
      member = int(view.split("_")[1])
      return [(i, float(s[member])) for i, s in rows]
    return score


# ------------------------------------------------------------- evaluation


def _text(example, name, vocabulary):
  value = example.get(f"{name}_pretokenized")
  if value is None:
    return vocabulary.decode([int(t) for t in example[name] if t])
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _write_votes(evaluator, task_name, outputs, path):
  task = seqio.get_mixture_or_task(task_name)
  examples = list(evaluator.cached_task_datasets[task_name].as_numpy_iterator())
  prediction = dict(outputs.predictions[ENSEMBLE])
  lines = []
  for entry in sorted(outputs.votes, key=lambda e: e["index"]):
    example = examples[entry["index"]]
    row = {"index": entry["index"],
           "input": _text(example, "inputs", task.output_features["inputs"].vocabulary),
           "target": _text(example, "targets", task.output_features["targets"].vocabulary),
           "prediction": task.output_features["targets"].vocabulary.decode(
               prediction[entry["index"]]),
           **{k: v for k, v in entry.items() if k != "index"}}
    lines.append(json.dumps(row) + "\n")
  file_utils.write_text_atomic(path, "".join(lines))


def _write_label_scores(outputs, name, path):
  file_utils.write_text_atomic(path, "".join(
      json.dumps({"index": i, "label_scores": dict(zip(outputs.labels, map(float, s))),
                  "prediction": outputs.labels[int(np.argmax(s))]}) + "\n"
      for i, s in outputs.label_scores[name]))


def _evaluate_view(evaluator, fns, view, step, out_dir, extra):
  """seqio's evaluation of one member (or the ensemble), logged into out_dir."""
  with evaluator.loggers.writing_to(out_dir):
    return seqio_eval.evaluate(evaluator, step, fns.predict_fn(view), fns.score_fn(view), extra)


def summary_table(results, views) -> str:
  """The metrics side by side: one row per (task, metric), one column per view."""
  rows = sorted({(task, metric) for view in views for task, m in results[view].items()
                 for metric in m})
  return tables.markdown(["task", "metric"] + list(views), [[task, metric] + [
      f"{results[v][task][metric]:.4f}" if metric in results[v].get(task, {}) else "-"
      for v in views] for task, metric in rows])


def run(evaluator, model, members: Sequence[Member], frozen, batch_size, mesh,
        decoding="auto", out_dir=None):
  """Evaluates every member and the ensemble; returns {view: {task: {metric: value}}}
  with views member_0 ... member_{N-1} and 'ensemble'."""
  if evaluator is None:
    return {}
  if decoding not in seqio_eval.DECODINGS:
    raise ValueError(f"EVAL_DECODING must be one of {seqio_eval.DECODINGS}, got {decoding!r}")
  out_dir = out_dir or evaluator.log_dir
  if decoding == "both":
    return {mode: run(evaluator, model, members, frozen, batch_size, mesh, mode,
                      os.path.join(out_dir, mode)) for mode in ("greedy", "rank")}["rank"]
  writes = jax.process_index() == 0
  decode_len = evaluator.model_feature_shapes["decoder_target_tokens"][0]
  fns = Ensemble(model, members, frozen, batch_size, mesh, decode_len, decoding, evaluator)
  steps = {m.step for m in members}
  ensemble_step = steps.pop() if len(steps) == 1 else 0
  start = time.time()
  results = {}
  for i, member in enumerate(members):
    name = member_name(i)
    sub = os.path.join(out_dir, name)
    if writes:
      file_utils.makedirs(sub)
    routing = {}
    if smop.is_smop(model):
      routing = {task.name: smop.routing_metrics(fns.outputs(task.name).routing[i])
                 for task in evaluator.eval_tasks}
    results[name] = _evaluate_view(evaluator, fns, name, member.step, sub, routing)
    for task in evaluator.eval_tasks if writes else ():
      outputs = fns.outputs(task.name)
      if outputs.label_scores is not None:
        _write_label_scores(outputs, name, os.path.join(
            sub, f"{task.name}-{member.step:06}-label_scores.jsonl"))
  sub = os.path.join(out_dir, ENSEMBLE)
  if writes:
    file_utils.makedirs(sub)
  results[ENSEMBLE] = _evaluate_view(evaluator, fns, ENSEMBLE, ensemble_step, sub, {})
  views = [member_name(i) for i in range(len(members))] + [ENSEMBLE]
  if writes:
    for task in evaluator.eval_tasks:
      _write_votes(evaluator, task.name, fns.outputs(task.name),
                   os.path.join(sub, f"{task.name}-{ensemble_step:06}-votes.jsonl"))
    summary = {"members": [{"name": member_name(i), "source": m.source, "step": m.step}
                           for i, m in enumerate(members)],
               "ensemble_step": ensemble_step, "decoding": decoding,
               "metrics": {view: results[view] for view in views}}
    file_utils.write_text_atomic(os.path.join(out_dir, "ensemble_summary.json"),
                                 json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(f"ensemble of {len(members)} prompts on {evaluator.mixture_or_task_name} "
          f"({decoding}, {time.time() - start:.1f}s):", flush=True)
    for i, m in enumerate(members):
      print(f"  {member_name(i)}: {m.source} (step {m.step})", flush=True)
    print(summary_table(results, views), flush=True)
  return results
