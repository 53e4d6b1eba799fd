"""Evaluation with seqio.Evaluator: greedy predictions and target scores.

`predict_fn` decodes greedily up to TASK_FEATURE_LENGTHS['targets'];
`score_fn` returns the sum of target-token log-likelihoods. Both run the
jitted model over fixed-size batches (the last one padded and trimmed).
Results go through seqio's own JSONLogger (`{task}-metrics.jsonl`,
`{task}-{step:06}.jsonl`) and TensorBoardLogger. A mixture is evaluated task
by task, and `{mixture}-metrics.jsonl` gets every task's metrics plus their
average (each task's metrics averaged first). With a SMoP prompt, each task's
metrics also get `routing/prompt_i`: the share of its eval examples routed to
prompt i (not part of the mixture average).
"""
import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Mapping, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning import data
from prompt_tuning.model.encoder_decoder import EOS_ID
from prompt_tuning.model import losses
from prompt_tuning.model import partitioning
from prompt_tuning import progress
from prompt_tuning.storage import file_utils


MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")


class EvalError(ValueError):
  """Evaluation that cannot run as configured (split, output folder, ...); says what to fix."""


def batches(ds, batch_size, mesh=None):
  """Yields (index, features) for every global batch of an enumerated dataset.

  Multi-process: the examples are split between the process groups of the
  mesh's data layout (processes that hold the same data shards form a group),
  each group reads only its part, and every process runs the same number of
  batches (the collective computations must line up), padded where its part
  runs out. `index` holds this process's rows' positions in `ds`, -1 for
  padding; `features` this process's rows of the global batch, for
  partitioning.shard_batch. One process: plain batches, the last one padded.
  Each batch's padding columns are cut to its bucket lengths (data.fit_batch).
  """
  layout = partitioning.data_layout(mesh) if mesh is not None else None
  groups, group = (layout.num_groups, layout.group) if layout else (1, 0)
  local = layout.local_batch(batch_size) if layout else batch_size
  if groups > 1:
    count = int(ds.reduce(np.int64(0), lambda n, _: n + 1))
    steps = -(-(-(-count // groups)) // local)  # ceil(ceil(count / groups) / local)
    ds = ds.shard(groups, group)
  else:
    steps = None
  iterator = ds.batch(local).as_numpy_iterator()
  done = 0
  while steps is None or done < steps:
    item = next(iterator, None)
    if item is None:
      if steps is None:
        return
      index, feats = np.zeros((0,), np.int64), None
    else:
      index, features = item
      feats = {k: features[k] for k in MODEL_FEATURES}
    if feats is None:  # this group's part ran out before the others'
      feats = {k: np.zeros((0,) + shape, dtype) for k, (shape, dtype) in _feature_specs(ds).items()}
    n = len(index)
    if n < local:
      index = np.concatenate([index, np.full(local - n, -1, index.dtype)])
      feats = {k: np.concatenate([v, np.zeros((local - n,) + v.shape[1:], v.dtype)])
               for k, v in feats.items()}
    done += 1
    # Cut to its bucket lengths (PADDING; all processes agree on them).
    yield index, data.fit_batch(feats)


def _feature_specs(ds):
  spec = ds.element_spec[1]
  return {k: (tuple(spec[k].shape[1:]), spec[k].dtype.as_numpy_dtype) for k in MODEL_FEATURES}


def global_index(mesh, index):
  """Every process's `index` rows (from `batches`), in global batch order."""
  if jax.process_count() == 1:
    return index
  return partitioning.gather(partitioning.shard_batch(mesh, index))


def label_token_ids(vocabulary, labels):
  """[K, T] ids of each label string followed by EOS (zero-padded)."""
  encoded = [list(vocabulary.encode(label)) + [EOS_ID] for label in labels]
  out = np.zeros((len(encoded), max(map(len, encoded))), np.int32)
  for k, ids in enumerate(encoded):
    out[k, :len(ids)] = ids
  return out


def make_rank_fn(model, label_ids):
  """(params, batch) -> [b, K] log-likelihood of every label; the encoder
  (with the prompt) runs once per example and is shared by all labels."""
  label_ids = jnp.asarray(label_ids)

  def rank(params, batch):
    encoded, mask = model.encode(params, batch["encoder_input_tokens"])
    b = encoded.shape[0]
    scores = []
    for k in range(label_ids.shape[0]):
      targets = jnp.broadcast_to(label_ids[k], (b, label_ids.shape[1]))
      inputs = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]  # shifted right, start id 0
      logits = model.decode_logits(params, encoded, mask, inputs, targets)
      ll = losses.token_log_likelihoods(logits, targets)
      scores.append(jnp.sum(ll * (targets > 0), axis=-1))
    return jnp.stack(scores, axis=-1)

  return rank


_JITTED = {}


def jitted(key, build):
  """One jitted function per key for the whole process, so periodic
  evaluations and every task reuse their compilations. `key` holds the model
  itself (a frozen dataclass: equal models share, and a freed model's key is
  never taken by another) and what else the function depends on."""
  if key not in _JITTED:
    _JITTED[key] = jax.jit(build())
  return _JITTED[key]


class ModelFns:
  """Jitted predict/score functions over a fixed parameter tree.

  `decoding`: 'greedy' decodes every task; 'rank' (rank classification)
  scores each label string of a task that has class labels
  (prompt_tuning.tasks.labels) and predicts the best, so the prediction is
  always a legal label; 'auto' = rank where labels exist, else greedy. Rank
  scores go to `{task}-{step:06}-label_scores.jsonl` beside seqio's files.
  """

  def __init__(self, model, params, batch_size, mesh, max_decode_length, evaluator=None,
               decoding="greedy", step=0, log_dir=None):
    self.model, self.params, self.batch_size, self.mesh = model, params, batch_size, mesh
    self._predict = jitted((model, "predict", max_decode_length), lambda: functools.partial(
        model.predict_batch, max_decode_length=max_decode_length))
    self._score = jitted((model, "score"), lambda: model.score_batch)
    self._decoding, self._step, self._log_dir = decoding, step, log_dir
    self._task_of = {}
    if evaluator is not None:
      self._task_of = {id(ds): name for name, ds in evaluator.cached_model_datasets.items()}

  def _run(self, fn, ds, what):
    out = []
    count = int(ds.cardinality())  # seqio's cached eval datasets know their size
    done = progress.counter("eval", what, count if count >= 0 else None, "examples",
                            enabled=jax.process_index() == 0)
    for index, feats in batches(ds, self.batch_size, self.mesh):
      result = partitioning.gather(fn(self.params, partitioning.shard_batch(self.mesh, feats)))
      index = global_index(self.mesh, index)
      out.extend((i, r) for i, r in zip(index.tolist(), result) if i >= 0)
      done(len(out))
    return out

  def _labels(self, task_name):
    if self._decoding == "greedy" or task_name is None:
      return None
    from prompt_tuning.tasks import labels  # pylint: disable=g-import-not-at-top
    found = labels.get_class_labels(task_name)
    if not found and self._decoding == "rank":
      logging.warning("%s has no class labels: decoding greedily", task_name)
    return found

  def predict_fn(self, ds, *unused_args):
    task_name = self._task_of.get(id(ds))
    label_strings = self._labels(task_name)
    if not label_strings:
      return [(i, tokens.tolist()) for i, tokens in self._run(
          self._predict, ds, f"{task_name or 'task'} step {self._step} greedy decoding")]
    vocabulary = seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary
    ids = label_token_ids(vocabulary, label_strings)
    rank = jitted((self.model, "rank", ids.tobytes(), ids.shape),
                   lambda: make_rank_fn(self.model, ids))
    scored = self._run(rank, ds, f"{task_name} step {self._step} rank classification")
    if self._log_dir and jax.process_index() == 0:
      file_utils.write_text_atomic(
          os.path.join(self._log_dir, f"{task_name}-{self._step:06}-label_scores.jsonl"),
          "".join(json.dumps({"index": i, "label_scores": dict(zip(label_strings, map(float, s))),
                              "prediction": label_strings[int(np.argmax(s))]}) + "\n"
                  for i, s in scored))
    return [(i, ids[int(np.argmax(s))].tolist()) for i, s in scored]

  def score_fn(self, ds, *unused_args):
    task_name = self._task_of.get(id(ds))
    return [(i, float(score)) for i, score in self._run(
        self._score, ds, f"{task_name or 'task'} step {self._step} scoring")]


def check_split(mixture_or_task_name: str, split: str, *, setting: str = "EVAL_SPLIT",
                error=EvalError, hint: str = "", need_metrics: bool = False) -> None:
  """`error` unless some task of the task or mixture has the split (and, with
  need_metrics, metrics to compute on it); the message names the `setting`,
  lists the splits and ends with `hint`, what to set instead."""
  tasks = seqio.get_subtasks(data.get_task(mixture_or_task_name))
  if not any(split in task.splits for task in tasks):
    splits = sorted({s for task in tasks for s in task.splits})
    raise error(f"{setting} {split!r} is not a split of {mixture_or_task_name} (its splits: "
                f"{', '.join(splits) or 'none'})" + (f": {hint}" if hint else ""))
  if need_metrics and not seqio.evaluation.get_valid_eval_tasks(tasks, split):
    raise error(f"nothing to evaluate: no task of {mixture_or_task_name} has metrics "
                f"(metric_fns) for its {split!r} split")


class Loggers(seqio.Logger):
  """The logger `make_evaluator` gives seqio.Evaluator (through `logger_cls`,
  seqio's public way): seqio's JSONLogger and TensorBoardLogger, on process 0
  only, writing into `output_dir`, which `writing_to` moves for a while
  (pt-eval's greedy/ and rank/ folders, an ensemble's member_i/), adding
  `extra` metrics to each task's line (a method's own, e.g. SMoP's routing)."""

  def __init__(self, output_dir, writes: bool = True):
    super().__init__(output_dir)
    self.writes, self.extra = writes, {}
    self._set(output_dir)

  def _set(self, output_dir):
    self.output_dir = output_dir
    # seqio's loggers write through TensorFlow's file system; a gs:// folder
    # gets their files through the storage layer (file_utils.Mirror).
    self._mirror = (file_utils.Mirror(output_dir, pull=("-metrics.jsonl",))
                    if self.writes and file_utils.is_remote(output_dir) else None)
    local = self._mirror.local if self._mirror else output_dir
    self._writers = ((seqio.JSONLogger(output_dir=local),
                      seqio.TensorBoardLogger(output_dir=local)) if self.writes else ())

  @contextlib.contextmanager
  def writing_to(self, output_dir=None, extra=None):
    """Within it, into `output_dir` (None: the same) with `extra`
    ({task: {metric: value}}) added to each task's metrics."""
    saved = (self.output_dir, self._writers, self.extra, self._mirror)
    if output_dir is not None:
      self._set(output_dir)
    self.extra = extra or {}
    try:
      yield self
    finally:
      if output_dir is not None and self._mirror is not None:
        self._mirror.close()
      self.output_dir, self._writers, self.extra, self._mirror = saved

  def __call__(self, task_name, step, metrics, dataset, inferences, targets):
    more = {k: seqio.metrics.Scalar(v) for k, v in self.extra.get(task_name, {}).items()}
    for logger in self._writers:
      logger(task_name=task_name, step=step, metrics={**metrics, **more}, dataset=dataset,
             inferences=inferences, targets=targets)
    if self._mirror is not None:
      self._mirror.sync()


@dataclasses.dataclass
class Evaluation:
  """A seqio.Evaluator of a task or mixture's split, and its loggers."""
  evaluator: seqio.Evaluator
  loggers: Loggers
  mixture_or_task_name: str
  log_dir: str

  @property
  def eval_tasks(self):
    return self.evaluator.eval_tasks

  @property
  def cached_model_datasets(self):
    return self.evaluator.cached_model_datasets

  @property
  def cached_task_datasets(self):
    return self.evaluator.cached_task_datasets

  @property
  def model_feature_shapes(self):
    return self.evaluator.model_feature_shapes

  def evaluate(self, **kwargs):
    """seqio.Evaluator.evaluate (compute_metrics, step, predict_fn, score_fn)."""
    return self.evaluator.evaluate(**kwargs)


def make_evaluator(model, mixture_or_task_name, task_feature_lengths, split, log_dir,
                   batch_size, use_cached, mesh, make_log_dir=True) -> Optional[Evaluation]:
  """The Evaluation of a task or mixture's split (None, with a warning, if
  no task of it has metrics).

  Reads every task's `split` (seqio caches it), so a split that cannot be read
  fails here, as EvalError. The loggers write nothing until it runs;
  make_log_dir=False leaves `log_dir` for the caller to create before then.
  """
  del model, batch_size, mesh
  data.get_task(mixture_or_task_name)
  # Every process computes the metrics (from the gathered outputs); process 0 writes them.
  writes = jax.process_index() == 0
  made = []

  def logger(output_dir):
    made.append(Loggers(output_dir, writes))
    return made[-1]

  try:
    evaluator = seqio.Evaluator(
        mixture_or_task_name, feature_converter=data.feature_converter(), eval_split=split,
        use_cached=use_cached, sequence_length=dict(task_feature_lengths),
        logger_cls=[logger], log_dir=log_dir, async_compute_metrics=False)
  except (ValueError, KeyError, FileNotFoundError, tf.errors.OpError) as e:
    text = str(e).strip()
    message = text.splitlines()[0] if text else type(e).__name__
    raise EvalError(f"cannot read split {split!r} of {mixture_or_task_name!r} for "
                    f"evaluation: {message}") from None
  if writes and make_log_dir:
    file_utils.makedirs(log_dir)
  if not evaluator.eval_tasks:
    logging.warning("%s has no task with metrics on split %r: evaluation is skipped",
                    mixture_or_task_name, split)
    return None
  return Evaluation(evaluator, made[0], mixture_or_task_name, log_dir)


def scalar_value(value) -> float:
  """A metric's value as a float (seqio.metrics.Scalar or a number)."""
  return float(value.value) if isinstance(value, seqio.metrics.Scalar) else float(value)


def mixture_summary(metrics_by_task: Mapping[str, Mapping[str, object]]) -> dict:
  """{'task/metric': v, ..., 'average': mean over tasks of each task's mean metric}."""
  out, task_means = {}, []
  for task, metrics in sorted(metrics_by_task.items()):
    values = []
    for name, value in metrics.items():
      try:
        values.append(scalar_value(value))
      except (TypeError, ValueError):
        continue
      out[f"{task}/{name}"] = values[-1]
    if values:
      task_means.append(float(np.mean(values)))
  if task_means:
    out["average"] = float(np.mean(task_means))
  return out


def method_metrics(evaluator, model, params, batch_size, mesh) -> dict:
  """{task: {metric: value}} that the model's method adds to each task's
  metrics (methods.eval_metrics_fn: SMoP's routing shares), or {}."""
  from prompt_tuning import methods  # pylint: disable=g-import-not-at-top
  metrics_fn = methods.eval_metrics_fn(model)
  if metrics_fn is None:
    return {}
  return {task.name: metrics_fn(model, params, (
      (global_index(mesh, index), partitioning.shard_batch(mesh, feats)) for index, feats in
      batches(evaluator.cached_model_datasets[task.name], batch_size, mesh)))
          for task in evaluator.eval_tasks}


def evaluate(evaluation, step, predict_fn, score_fn, extra=None) -> dict:
  """One seqio evaluation through `predict_fn`/`score_fn`: {task: {metric:
  float}}, plus a mixture's summary (logged under its own name) and `extra`
  ({task: {metric: value}}, merged into each task's metrics line)."""
  extra = extra or {}
  with evaluation.loggers.writing_to(extra=extra):
    all_metrics, _ = evaluation.evaluate(compute_metrics=True, step=step,
                                         predict_fn=predict_fn, score_fn=score_fn)
  metrics = all_metrics.result() if hasattr(all_metrics, "result") else all_metrics
  result = {task: {k: scalar_value(v) for k, v in m.items()} for task, m in metrics.items()}
  name = evaluation.mixture_or_task_name
  if len(result) > 1 or name not in result:
    summary = mixture_summary(result)
    evaluation.loggers(task_name=name, step=step,
                       metrics={k: seqio.metrics.Scalar(v) for k, v in summary.items()},
                       dataset=None, inferences=None, targets=None)
    result[name] = summary
  for task, values in extra.items():
    result.setdefault(task, {}).update(values)
  return result


DECODINGS = ("auto", "rank", "greedy", "both")


def run(evaluator, model, params, step, batch_size, mesh, max_decode_length=None,
        decoding="auto"):
  """Evaluates `params`; returns {task: {metric: float}} (plus the mixture summary).

  decoding='both' evaluates twice, with rank classification and with greedy
  decoding (the paper's protocol), logged under `rank/` and `greedy/` of the
  output folder and printed side by side; the returned dict is the rank one.
  """
  if evaluator is None:
    return {}
  if decoding not in DECODINGS:
    raise ValueError(f"EVAL_DECODING must be one of {DECODINGS}, got {decoding!r}")
  if decoding == "both":
    results = {}
    for mode in ("greedy", "rank"):
      sub = os.path.join(evaluator.log_dir, mode)
      if jax.process_index() == 0:
        file_utils.makedirs(sub)
      with evaluator.loggers.writing_to(sub):
        results[mode] = run(evaluator, model, params, step, batch_size, mesh,
                            max_decode_length, mode)
    return results["rank"]
  lengths = evaluator.model_feature_shapes
  decode_len = max_decode_length or lengths["decoder_target_tokens"][0]
  fns = ModelFns(model, params, batch_size, mesh, decode_len, evaluator, decoding, step,
                 evaluator.loggers.output_dir)
  extra = method_metrics(evaluator, model, params, batch_size, mesh)
  start = time.time()
  result = evaluate(evaluator, step, fns.predict_fn, fns.score_fn, extra)
  for task, m in sorted(result.items()) if jax.process_index() == 0 else ():
    print(f"eval step {step} {task} ({decoding}, {time.time() - start:.1f}s): "
          + ", ".join(f"{k} {v:.4f}" for k, v in sorted(m.items())), flush=True)
  return result
