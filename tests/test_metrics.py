"""(Super)GLUE postprocessors and metrics against hand-computed values."""
import math

import numpy as np
import pytest

from prompt_tuning.tasks import metrics
from prompt_tuning.tasks import postprocessors

RTE_LABELS = ("entailment", "not_entailment")


# ----------------------------------------------------------- postprocessors --


def test_string_label_to_class_id():
  to_id = postprocessors.string_label_to_class_id
  assert to_id(b"entailment", label_classes=RTE_LABELS) == 0
  assert to_id("not_entailment", label_classes=RTE_LABELS) == 1
  assert to_id(np.bytes_(b"not_entailment"), label_classes=RTE_LABELS) == 1
  for illegal in ("Entailment", "", "entailment ", "<unk>", b"\xff"[:0]):
    assert to_id(illegal, label_classes=RTE_LABELS) == -1


def test_string_to_float():
  assert postprocessors.string_to_float("3.8") == 3.8
  assert postprocessors.string_to_float(b"2") == 2.0
  assert postprocessors.string_to_float("three") == -1.0


def test_wsc_simple_postprocessor():
  example = {"targets_pretokenized": b"the demonstrators", "label": np.int64(1)}
  score = postprocessors.wsc_simple
  assert score("", example=example, is_target=True) == 1
  assert score("The Demonstrators", example=example) == 1  # Case, determiner.
  assert score("demonstrators", example=example) == 1  # Subset of words.
  assert score("the angry demonstrators", example=example) == 1  # Superset.
  assert score("the city councilmen", example=example) == 0
  assert score("", example=example) == 0
  bob = {"targets_pretokenized": b"Bob", "label": np.int64(0)}
  assert score("Bob's hat", example=bob) == 0  # Apostrophe on one side only.
  assert score("his Bob", example=bob) == 1
  assert score("", example=bob, is_target=True) == 0


# ------------------------------------------------------------ classification --


def test_accuracy():
  assert metrics.accuracy([0, 1, 1, 0], [0, 1, 0, -1]) == {"accuracy": 50.0}
  assert metrics.accuracy([0, 1, 1], [1, 0, 0]) == {"accuracy": 0.0}
  assert metrics.accuracy([0, 1, 1], [-1, -1, -1]) == {"accuracy": 0.0}
  assert metrics.accuracy([2, 1], [2, 1]) == {"accuracy": 100.0}
  assert metrics.accuracy([], []) == {"accuracy": 0.0}


def test_illegal_labels_through_postprocessor_are_wrong():
  targets = [postprocessors.string_label_to_class_id(t, RTE_LABELS)
             for t in ("entailment", "not_entailment", "entailment")]
  predictions = [postprocessors.string_label_to_class_id(p, RTE_LABELS)
                 for p in ("entailment", "yes", "not entailment")]
  assert predictions == [0, -1, -1]
  assert metrics.accuracy(targets, predictions)["accuracy"] == pytest.approx(
      100 / 3)


def test_f1_with_invalid():
  # Invalid at index 1 (target 1) becomes a false negative.
  # TP: 0; FP: 2; FN: 1, 4 -> F1 = 2 / (2 + 1 + 2) = 0.4.
  result = metrics.f1_score_with_invalid([1, 1, 0, 0, 1], [1, -1, 1, 0, 0])
  assert result == {"f1": pytest.approx(40.0)}
  assert metrics.f1_score_with_invalid([1, 0], [0, 1]) == {"f1": 0.0}
  assert metrics.f1_score_with_invalid([0, 0], [0, 0]) == {"f1": 0.0}
  # Invalid where the target is 0 becomes a false positive.
  assert metrics.f1_score_with_invalid([1, 0], [1, 7]) == {
      "f1": pytest.approx(100 * 2 / 3)}


def test_cb_class_never_predicted_and_illegal():
  # class 0: TP 2 -> F1 1; class 1: TP 1, FP 1 -> 2/3; class 2 never
  # predicted: TP 0, FN 2 -> 0. The illegal -1 is a false negative of class 2.
  result = metrics.cb_metrics([0, 0, 1, 2, 2], [0, 0, 1, 1, -1])
  assert result == {"mean_3class_f1": pytest.approx(100 * (1 + 2 / 3) / 3),
                    "accuracy": pytest.approx(60.0)}


def test_cb_all_wrong_and_perfect():
  assert metrics.cb_metrics([0, 1, 2], [1, 2, 0]) == {
      "mean_3class_f1": 0.0, "accuracy": 0.0}
  assert metrics.cb_metrics([0, 1, 2, 2], [0, 1, 2, 2]) == {
      "mean_3class_f1": 100.0, "accuracy": 100.0}
  # A class absent from targets and predictions scores 0 (not skipped).
  assert metrics.mean_multiclass_f1(3)([0, 1], [0, 1]) == {
      "mean_3class_f1": pytest.approx(200 / 3)}


def test_matthews():
  # TP 1, FN 1, TN 2, FP 0: (1*2 - 0*1) / sqrt(1 * 2 * 2 * 3).
  expected = 100 * 2 / math.sqrt(12)
  assert metrics.matthews_corrcoef([1, 1, 0, 0], [1, 0, 0, 0]) == {
      "matthews_corrcoef": pytest.approx(expected)}
  # An illegal prediction counts as the wrong class.
  assert metrics.matthews_corrcoef([1, 1, 0, 0], [1, -1, 0, 0]) == {
      "matthews_corrcoef": pytest.approx(expected)}
  assert metrics.matthews_corrcoef([1, 0, 1], [1, 0, 1]) == {
      "matthews_corrcoef": pytest.approx(100.0)}
  assert metrics.matthews_corrcoef([1, 0, 1], [0, 1, 0]) == {
      "matthews_corrcoef": pytest.approx(-100.0)}
  # Undefined (a constant side) -> 0, as sklearn.
  assert metrics.matthews_corrcoef([1, 0, 1], [1, 1, 1]) == {
      "matthews_corrcoef": 0.0}


def test_correlations():
  assert metrics.pearson_corrcoef([1, 2, 3, 4], [2, 4, 6, 8]) == {
      "pearson_corrcoef": pytest.approx(100.0)}
  assert metrics.pearson_corrcoef([1, 2, 3, 4], [4, 3, 2, 1]) == {
      "pearson_corrcoef": pytest.approx(-100.0)}
  # dx = [-1, 0, 1], dy = [-1, 1, 0]: 1 / sqrt(2 * 2).
  assert metrics.pearson_corrcoef([1, 2, 3], [1, 3, 2]) == {
      "pearson_corrcoef": pytest.approx(50.0)}
  # Tied ranks are averaged: x ranks [1, 2.5, 2.5, 4], y ranks [1, 3, 2, 4]
  # -> 4.5 / sqrt(4.5 * 5).
  assert metrics.spearman_corrcoef([1, 2, 2, 3], [1, 3, 2, 4]) == {
      "spearman_corrcoef": pytest.approx(100 * 4.5 / math.sqrt(22.5))}
  assert metrics.spearman_corrcoef([1, 2, 3], [10, 200, 3000]) == {
      "spearman_corrcoef": pytest.approx(100.0)}
  # An unparsable STS-B prediction (-1.0) is scored as a number, as in T5.
  assert metrics.pearson_corrcoef([1, 2, 3], [-1, -1, -1]) == {
      "pearson_corrcoef": 0.0}


def test_correlations_match_scipy():
  from scipy import stats  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = rng.integers(0, 6, size=40).astype(float)
  y = np.round(x + rng.normal(size=40), 1)
  assert metrics.pearson_corrcoef(x, y)["pearson_corrcoef"] == pytest.approx(
      100 * stats.pearsonr(x, y)[0])
  assert metrics.spearman_corrcoef(x, y)["spearman_corrcoef"] == (
      pytest.approx(100 * stats.spearmanr(x, y)[0]))


# ------------------------------------------------------------------ MultiRC --


def _multirc_example(paragraph, question, answer):
  return {"idx/paragraph": np.int32(paragraph),
          "idx/question": np.int32(question), "idx/answer": np.int32(answer)}


def test_multirc_several_questions_per_paragraph():
  # (paragraph, question, answer id, gold, prediction)
  rows = [
      (0, 0, 0, "True", "True"), (0, 0, 1, "False", "False"),
      (0, 0, 2, "True", "True"),            # question (0, 0): all right
      (0, 1, 3, "False", "False"), (0, 1, 4, "True", "False"),  # one wrong
      (1, 0, 5, "True", "True"), (1, 0, 6, "False", "maybe"),  # illegal
  ]
  targets = [postprocessors.multirc(g, example=_multirc_example(p, q, a),
                                    is_target=True) for p, q, a, g, _ in rows]
  predictions = [postprocessors.multirc(x, example=_multirc_example(p, q, a))
                 for p, q, a, _, x in rows]
  assert targets[0] == {"value": 1, "group": (0, 0)}
  assert predictions[-1] == {"value": -1}
  # EM: 1 of 3 questions. F1a over the 7 options: TP 3 (0, 2, 5), FP 1 (the
  # illegal prediction of a False option), FN 1 (option 4) -> 6 / 8.
  assert metrics.multirc_metrics(targets, predictions) == {
      "f1": pytest.approx(75.0), "exact_match": pytest.approx(100 / 3)}


def test_multirc_all_wrong():
  targets = [{"value": 1, "group": (0, 0)}, {"value": 0, "group": (0, 1)}]
  predictions = [{"value": 0}, {"value": 1}]
  assert metrics.multirc_metrics(targets, predictions) == {
      "f1": 0.0, "exact_match": 0.0}


# ------------------------------------------------------------------- ReCoRD --


def _record_example(passage, query, answers):
  return {"idx/passage": np.int32(passage), "idx/query": np.int32(query),
          "answers": np.array([a.encode() for a in answers], dtype=object)}


def test_normalize_squad():
  assert metrics.normalize_squad("The  Eiffel-Tower, a landmark!") == (
      "eiffeltower landmark")
  assert metrics.normalize_squad("An apple and THE pear.") == "apple and pear"
  assert metrics.normalize_squad("Theatre") == "theatre"  # Whole words only.


def test_record_several_gold_answers_punctuation_and_articles():
  queries = [
      # (passage, query, gold answers, prediction)
      (0, 0, ["Eiffel Tower", "the Tower"], "The Eiffel Tower!"),
      (0, 1, ["London Tower", "Tower Bridge"], "Tower of London"),
      (1, 2, ["Paris"], "an apple"),
  ]
  targets, predictions = [], []
  for passage, query, golds, prediction in queries:
    example = _record_example(passage, query, golds)
    # The dataset repeats a query once per gold answer; each copy is scored
    # only once.
    for _ in golds:
      targets.append(postprocessors.record(golds[0], example=example,
                                           is_target=True))
      predictions.append(postprocessors.record(prediction.encode(),
                                               example=example))
  assert targets[0] == {"value": ["Eiffel Tower", "the Tower"],
                        "group": (0, 0)}
  assert predictions[0] == {"value": "The Eiffel Tower!"}
  # EM: only the first. F1: 1; max(F1 vs 'London Tower' = 2*(2/3*1)/(2/3+1)
  # = 0.8, vs 'Tower Bridge' = 2*(1/3*1/2)/(1/3+1/2) = 0.4); 0.
  assert metrics.record_metrics(targets, predictions) == {
      "em": pytest.approx(100 / 3), "f1": pytest.approx(100 * 1.8 / 3)}


def test_record_all_wrong_and_unlabelled():
  targets = [{"value": ["Paris"], "group": (0, 0)},
             {"value": [], "group": (0, 1)}]
  predictions = [{"value": "London"}, {"value": "Paris"}]
  assert metrics.record_metrics(targets, predictions) == {"em": 0.0,
                                                          "f1": 0.0}
  assert metrics.squad_em_f1([["x b c"]], ["b c d"]) == {
      "em": 0.0, "f1": pytest.approx(100 * 2 / 3)}
  # 'a' is an article: gold 'b c' -> P 2/3, R 1.
  assert metrics.squad_em_f1([["a b c"]], ["b c d"]) == {
      "em": 0.0, "f1": pytest.approx(80.0)}


# --------------------------------------------------------------------- AX-g --


def test_axg_accuracy_and_gender_parity():
  rows = [(3, "not_entailment", "entailment"), (0, "entailment", "entailment"),
          (1, "entailment", "entailment"), (2, "not_entailment",
                                            "not_entailment"),
          (5, "not_entailment", "not_entailment"), (4, "entailment", "maybe")]
  targets = [postprocessors.axg(g, example={"idx": np.int32(i)},
                                is_target=True) for i, g, _ in rows]
  predictions = [postprocessors.axg(p, example={"idx": np.int32(i)})
                 for i, _, p in rows]
  assert targets[0] == {"value": 1, "idx": 3} and predictions[5] == {
      "value": -1}
  # Pairs by idx: (0, 1) same; (2, 3) differ; (4, 5) differ (4 is illegal).
  # Correct: idx 0, 1, 2, 5.
  assert metrics.axg_metrics(targets, predictions) == {
      "accuracy": pytest.approx(400 / 6),
      "gender_parity": pytest.approx(100 / 3)}
  same = [{"value": 0}] * 6
  assert metrics.gender_parity(targets, same) == 100.0


# ------------------------------------------------------------------ average --


def test_super_glue_average():
  scores = {"cb": {"mean_3class_f1": 80.0, "accuracy": 90.0},
            "rte": {"accuracy": 70.0},
            "multirc": {"f1": 60.0, "exact_match": 20.0}}
  assert metrics.super_glue_average(scores) == pytest.approx(
      (85.0 + 70.0 + 40.0) / 3)
  with pytest.raises(ValueError):
    metrics.super_glue_average({})
  with pytest.raises(ValueError):
    metrics.super_glue_average({"rte": {}})
