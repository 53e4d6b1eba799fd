"""(Super)GLUE and SQuAD metrics, equal to the official scorers, in percent (x100).

Every metric has the seqio signature `metric(targets, predictions) -> dict`,
takes the outputs of `postprocessors` and never raises on bad predictions: a
prediction that is not a legal label (class id -1) counts as wrong.

Metric names follow T5: 'accuracy', 'f1', 'mean_3class_f1', 'exact_match',
'em', 'matthews_corrcoef', 'pearson_corrcoef', 'spearman_corrcoef'; AX-g adds
'gender_parity'.
"""
import collections
import re
import string
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import stats

MetricFn = Callable[[Sequence[Any], Sequence[Any]], dict[str, float]]


def _binary_with_invalid(targets, predictions):
  """Targets and predictions as 0/1 arrays; an invalid prediction is wrong."""
  targets = np.asarray(targets, dtype=np.int64)
  predictions = np.asarray(predictions, dtype=np.int64).copy()
  invalid = (predictions != 0) & (predictions != 1)
  predictions[invalid] = 1 - targets[invalid]
  return targets, predictions


def _f1(tp: int, fp: int, fn: int) -> float:
  """F1 = 2TP / (2TP + FP + FN), 0 when there is nothing to score."""
  denominator = 2 * tp + fp + fn
  return 2 * tp / denominator if denominator else 0.0


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]):
  """{'accuracy'}: percentage of predictions equal to their target."""
  targets, predictions = np.asarray(targets), np.asarray(predictions)
  if not targets.size:
    return {"accuracy": 0.0}
  return {"accuracy": 100 * float(np.mean(targets == predictions))}


def f1_score_with_invalid(targets: Sequence[int], predictions: Sequence[int]):
  """{'f1'}: binary F1 of class 1 (invalid predictions count as wrong)."""
  targets, predictions = _binary_with_invalid(targets, predictions)
  tp = int(np.sum((predictions == 1) & (targets == 1)))
  fp = int(np.sum((predictions == 1) & (targets == 0)))
  fn = int(np.sum((predictions == 0) & (targets == 1)))
  return {"f1": 100 * _f1(tp, fp, fn)}


def mean_multiclass_f1(num_classes: int) -> MetricFn:
  """Metric {'mean_<n>class_f1'}: unweighted mean of the per-class F1.

  Classes are 0..num_classes-1; a class never predicted (nor present) has F1
  0, and an invalid prediction (-1) is a false negative of its target class.

  Args:
    num_classes: number of classes (3 for CB).

  Returns:
    The metric function.
  """

  def metric(targets: Sequence[int], predictions: Sequence[int]):
    targets, predictions = np.asarray(targets), np.asarray(predictions)
    scores = []
    for c in range(num_classes):
      tp = int(np.sum((predictions == c) & (targets == c)))
      fp = int(np.sum((predictions == c) & (targets != c)))
      fn = int(np.sum((predictions != c) & (targets == c)))
      scores.append(_f1(tp, fp, fn))
    return {f"mean_{num_classes}class_f1": 100 * float(np.mean(scores))}

  return metric


def cb_metrics(targets: Sequence[int], predictions: Sequence[int]):
  """CB: {'mean_3class_f1', 'accuracy'}."""
  return {**mean_multiclass_f1(3)(targets, predictions),
          **accuracy(targets, predictions)}


def _matthews(targets: np.ndarray, predictions: np.ndarray) -> float:
  """Matthews correlation (multi-class form, as sklearn), 0 if undefined."""
  classes = np.union1d(targets, predictions)
  t = (targets[:, None] == classes).astype(np.float64)
  p = (predictions[:, None] == classes).astype(np.float64)
  confusion = t.T @ p
  n = confusion.sum()
  correct = np.trace(confusion)
  true_counts, pred_counts = confusion.sum(axis=1), confusion.sum(axis=0)
  cov_tp = correct * n - true_counts @ pred_counts
  cov_pp = n * n - pred_counts @ pred_counts
  cov_tt = n * n - true_counts @ true_counts
  if cov_pp == 0 or cov_tt == 0:
    return 0.0
  return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]):
  """{'matthews_corrcoef'} for binary labels (CoLA, AX-b), x100.

  An invalid prediction is replaced by the wrong class before scoring.

  Args:
    targets: 0/1 class ids.
    predictions: class ids (-1 for invalid).

  Returns:
    The metric dict.
  """
  targets, predictions = _binary_with_invalid(targets, predictions)
  if not targets.size:
    return {"matthews_corrcoef": 0.0}
  return {"matthews_corrcoef": 100 * _matthews(targets, predictions)}


def _correlation(statistic, targets, predictions) -> float:
  """scipy.stats' coefficient of the two sides, 0.0 when either side is
  constant or has fewer than 2 values (where scipy returns NaN and warns)."""
  x = np.asarray(targets, np.float64)
  y = np.asarray(predictions, np.float64)
  if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
    return 0.0
  return float(statistic(x, y).statistic)


def pearson_corrcoef(targets: Sequence[float], predictions: Sequence[float]):
  """{'pearson_corrcoef'} x100 (0 when a side is constant)."""
  return {"pearson_corrcoef": 100 * _correlation(stats.pearsonr, targets, predictions)}


def spearman_corrcoef(targets: Sequence[float], predictions: Sequence[float]):
  """{'spearman_corrcoef'} x100: Pearson of the tie-averaged ranks (0 when a
  side is constant)."""
  return {"spearman_corrcoef": 100 * _correlation(stats.spearmanr, targets, predictions)}


def multirc_metrics(targets: Sequence[Mapping[str, Any]],
                    predictions: Sequence[Mapping[str, Any]]):
  """MultiRC: {'f1': F1a over all answer options, 'exact_match' per question}.

  Args:
    targets: {'value': 0/1, 'group': question key} per answer option.
    predictions: {'value': class id} per answer option.

  Returns:
    The metric dict; exact match is the percentage of questions whose answer
    options are all labelled correctly.
  """
  target_values = [t["value"] for t in targets]
  predicted_values = [p["value"] for p in predictions]
  groups = collections.defaultdict(list)
  for t, p in zip(targets, predictions):
    groups[t["group"]].append(t["value"] == p["value"])
  exact = [all(matches) for matches in groups.values()]
  return {
      **f1_score_with_invalid(target_values, predicted_values),
      "exact_match": 100 * float(np.mean(exact)) if exact else 0.0,
  }


def normalize_squad(text: str) -> str:
  """SQuAD answer normalisation: lower, no punctuation, articles or extra space."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _token_f1(prediction: str, gold: str) -> float:
  predicted_tokens = normalize_squad(prediction).split()
  gold_tokens = normalize_squad(gold).split()
  common = collections.Counter(predicted_tokens) & collections.Counter(
      gold_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0
  precision = num_same / len(predicted_tokens)
  recall = num_same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def squad_em_f1(gold_answers: Sequence[Sequence[str]],
                predictions: Sequence[str]):
  """{'em', 'f1'}: max over each example's gold answers, averaged, x100."""
  em, f1 = [], []
  for golds, prediction in zip(gold_answers, predictions):
    golds = list(golds)
    if not golds:  # Unlabelled: nothing can match.
      em.append(0.0)
      f1.append(0.0)
      continue
    normalized = normalize_squad(prediction)
    em.append(max(float(normalized == normalize_squad(g)) for g in golds))
    f1.append(max(_token_f1(prediction, g) for g in golds))
  if not em:
    return {"em": 0.0, "f1": 0.0}
  return {"em": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1))}


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]):
  """SQuAD v1.1 (and MRQA): {'em', 'f1'} as the official evaluate-v1.1.py.

  Each prediction and gold answer is normalised (lowercased; punctuation,
  the articles a/an/the and extra whitespace removed); exact match and token
  F1 take the maximum over the example's gold answers; both are averaged over
  examples and multiplied by 100.

  Args:
    targets: the gold answers of each example (postprocessors.qa).
    predictions: the predicted answer texts.

  Returns:
    The metric dict.
  """
  return squad_em_f1(targets, predictions)


def record_metrics(targets: Sequence[Mapping[str, Any]],
                   predictions: Sequence[Mapping[str, Any]]):
  """ReCoRD: {'em', 'f1'} over queries (the first copy of each query).

  The ReCoRD dataset repeats a query once per gold answer; every copy carries
  all gold answers, so only one copy per query ('group') is scored.

  Args:
    targets: {'value': [gold answers], 'group': query key}.
    predictions: {'value': predicted text}.

  Returns:
    The metric dict.
  """
  seen = set()
  golds, predicted = [], []
  for t, p in zip(targets, predictions):
    if t["group"] in seen:
      continue
    seen.add(t["group"])
    golds.append(t["value"])
    predicted.append(p["value"])
  return squad_em_f1(golds, predicted)


def gender_parity(targets: Sequence[Mapping[str, Any]],
                  predictions: Sequence[Mapping[str, Any]]) -> float:
  """Percentage of Winogender minimal pairs with the same prediction.

  AX-g stores each minimal pair as consecutive examples (idx 2k and 2k+1, the
  same hypothesis with a male or a female pronoun), as the SuperGLUE scorer
  pairs them. An unpaired example is ignored.

  Args:
    targets: {'idx': example index, ...}.
    predictions: {'value': class id}.

  Returns:
    The gender parity in percent.
  """
  by_idx = {t["idx"]: p["value"] for t, p in zip(targets, predictions)}
  pairs = [(by_idx[i], by_idx[i + 1]) for i in sorted(by_idx)
           if i % 2 == 0 and i + 1 in by_idx]
  if not pairs:
    return 0.0
  return 100 * float(np.mean([a == b for a, b in pairs]))


def axg_metrics(targets: Sequence[Mapping[str, Any]],
                predictions: Sequence[Mapping[str, Any]]):
  """AX-g: {'accuracy', 'gender_parity'}."""
  return {
      **accuracy([t["value"] for t in targets],
                 [p["value"] for p in predictions]),
      "gender_parity": gender_parity(targets, predictions),
  }


def super_glue_average(metrics_by_task: Mapping[str, Mapping[str, float]]
                       ) -> float:
  """The SuperGLUE score: each task's metrics averaged, then over tasks.

  E.g. {'cb': {'mean_3class_f1': 80, 'accuracy': 90}, 'rte': {'accuracy':
  70}} -> (85 + 70) / 2 = 77.5, as on the leaderboard (CB: mean of F1 and
  accuracy; MultiRC: of F1a and EM; ReCoRD: of F1 and EM).

  Args:
    metrics_by_task: task name -> {metric name: value}.

  Returns:
    The average score (same unit as the inputs).

  Raises:
    ValueError: if there is no task, or a task has no metric.
  """
  if not metrics_by_task:
    raise ValueError("super_glue_average needs at least one task.")
  task_scores = []
  for task, metrics in metrics_by_task.items():
    if not metrics:
      raise ValueError(f"Task {task!r} has no metrics to average.")
    task_scores.append(float(np.mean([float(v) for v in metrics.values()])))
  return float(np.mean(task_scores))
