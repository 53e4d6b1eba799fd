"""Evaluation with seqio.Evaluator: greedy predictions and target scores.

`predict_fn` decodes greedily up to TASK_FEATURE_LENGTHS['targets'];
`score_fn` returns the sum of target-token log-likelihoods. Both run the
jitted model over fixed-size batches (the last one padded and trimmed).
Results go through seqio's own JSONLogger (`{task}-metrics.jsonl`,
`{task}-{step:06}.jsonl`) and TensorBoardLogger. A mixture is evaluated task
by task, and `{mixture}-metrics.jsonl` gets every task's metrics plus their
average (each task's metrics averaged first).
"""
import functools
from typing import Mapping

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from prompt_tuning import data
from prompt_tuning import file_utils
from prompt_tuning import partitioning

MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")


def batches(ds, batch_size):
  """Yields (indices [n], features padded to batch_size) from an enumerated dataset."""
  for index, features in ds.batch(batch_size).as_numpy_iterator():
    n = len(index)
    feats = {k: features[k] for k in MODEL_FEATURES}
    if n < batch_size:
      feats = {k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
               for k, v in feats.items()}
    yield index, feats


class ModelFns:
  """Jitted predict/score functions over a fixed parameter tree."""

  def __init__(self, model, params, batch_size, mesh, max_decode_length):
    self.model, self.params, self.batch_size, self.mesh = model, params, batch_size, mesh
    self._predict = jax.jit(functools.partial(model.predict_batch,
                                              max_decode_length=max_decode_length))
    self._score = jax.jit(model.score_batch)

  def _run(self, fn, ds):
    out = []
    for index, feats in batches(ds, self.batch_size):
      result = np.asarray(jax.device_get(fn(self.params, partitioning.shard_batch(self.mesh, feats))))
      out.extend(zip(index.tolist(), result[:len(index)]))
    return out

  def predict_fn(self, ds, *unused_args):
    return [(i, tokens.tolist()) for i, tokens in self._run(self._predict, ds)]

  def score_fn(self, ds, *unused_args):
    return [(i, float(score)) for i, score in self._run(self._score, ds)]


def make_evaluator(model, mixture_or_task_name, task_feature_lengths, split, log_dir,
                   batch_size, use_cached, mesh):
  """A seqio.Evaluator (None, with a warning, if no task of it has metrics)."""
  del model, batch_size, mesh
  data.get_task(mixture_or_task_name)
  file_utils.makedirs(log_dir)
  evaluator = seqio.Evaluator(
      mixture_or_task_name, feature_converter=data.feature_converter(), eval_split=split,
      use_cached=use_cached, sequence_length=dict(task_feature_lengths),
      logger_cls=[seqio.JSONLogger, seqio.TensorBoardLogger], log_dir=log_dir,
      async_compute_metrics=False)
  if not evaluator.eval_tasks:
    logging.warning("%s has no task with metrics on split %r: evaluation is skipped",
                    mixture_or_task_name, split)
    return None
  evaluator.mixture_or_task_name = mixture_or_task_name
  return evaluator


def _scalar(value):
  return float(value.value) if isinstance(value, seqio.metrics.Scalar) else float(value)


def mixture_summary(metrics_by_task: Mapping[str, Mapping[str, object]]) -> dict:
  """{'task/metric': v, ..., 'average': mean over tasks of each task's mean metric}."""
  out, task_means = {}, []
  for task, metrics in sorted(metrics_by_task.items()):
    values = []
    for name, value in metrics.items():
      try:
        values.append(_scalar(value))
      except (TypeError, ValueError):
        continue
      out[f"{task}/{name}"] = values[-1]
    if values:
      task_means.append(float(np.mean(values)))
  if task_means:
    out["average"] = float(np.mean(task_means))
  return out


def run(evaluator, model, params, step, writer, batch_size, mesh, max_decode_length=None):
  """Evaluates `params`; returns {task: {metric: float}} (plus the mixture summary)."""
  if evaluator is None:
    return {}
  lengths = evaluator.model_feature_shapes
  decode_len = max_decode_length or lengths["decoder_target_tokens"][0]
  fns = ModelFns(model, params, batch_size, mesh, decode_len)
  all_metrics, _ = evaluator.evaluate(compute_metrics=True, step=step,
                                      predict_fn=fns.predict_fn, score_fn=fns.score_fn)
  metrics = all_metrics.result() if hasattr(all_metrics, "result") else all_metrics
  result = {task: {k: _scalar(v) for k, v in m.items()} for task, m in metrics.items()}
  name = evaluator.mixture_or_task_name
  if len(result) > 1 or name not in result:
    summary = mixture_summary(result)
    for logger in evaluator._loggers:  # pylint: disable=protected-access
      logger(task_name=name, step=step,
             metrics={k: seqio.metrics.Scalar(v) for k, v in summary.items()},
             dataset=None, inferences=None, targets=None)
    result[name] = summary
  if writer is not None:
    writer.scalars(step, {f"eval/{t}/{k}": v for t, m in result.items() for k, v in m.items()})
  for task, m in sorted(result.items()):
    print(f"eval step {step} {task}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(m.items())),
          flush=True)
  return result
