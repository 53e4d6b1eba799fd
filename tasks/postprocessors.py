"""Postprocessors: decoded model outputs (and targets) to metric inputs.

seqio calls `postprocess_fn(text, example=..., is_target=...)` on every
prediction and on every target. As in T5, a target may be taken from the
example rather than from its text (WSC, ReCoRD), and grouping keys are added to
targets only. A prediction that is not a legal label maps to class id -1,
which every metric counts as wrong.
"""
from typing import Any, Mapping, Optional, Sequence

INVALID = -1

# Words ignored when comparing a WSC prediction with the candidate referent.
_WSC_DETERMINERS = frozenset({
    "a", "an", "few", "her", "his", "each", "every", "many", "much", "my",
    "our", "some", "that", "the", "their", "these", "this", "those", "which",
    "whose", "your"
})


def as_text(value: Any) -> str:
  """bytes (utf-8), numpy bytes/str scalars and str as str."""
  if hasattr(value, "item") and not isinstance(value, (bytes, str)):
    value = value.item()  # numpy scalar / 0-d array.
  if isinstance(value, bytes):
    return value.decode("utf-8")
  return str(value)


def _as_int(value: Any) -> int:
  return int(value.item() if hasattr(value, "item") else value)


def string_label_to_class_id(string_label: Any, label_classes: Sequence[str],
                             default: int = INVALID, **unused_kwargs) -> int:
  """The index of the label in `label_classes`, or `default` (-1) if illegal."""
  label = as_text(string_label)
  return label_classes.index(label) if label in label_classes else default


def string_to_float(string: Any, default: float = -1.0,
                    **unused_kwargs) -> float:
  """STS-B: the predicted score, or `default` if it is not a number."""
  try:
    return float(as_text(string))
  except ValueError:
    return default


def multirc(string_label: Any, example: Optional[Mapping[str, Any]] = None,
            is_target: bool = False) -> dict[str, Any]:
  """{'value': class id} plus, for targets, the question as 'group'.

  The group is (paragraph idx, question idx), so answers are grouped by
  question even if question ids repeat across paragraphs.

  Args:
    string_label: 'True'/'False' (anything else is invalid, -1).
    example: the preprocessed example (needed for targets).
    is_target: whether `string_label` is the target.

  Returns:
    A dict for `metrics.multirc_metrics`.
  """
  result = {"value": string_label_to_class_id(string_label, ("False", "True"))}
  if is_target:
    result["group"] = (_as_int(example["idx/paragraph"]),
                       _as_int(example["idx/question"]))
  return result


def record(answer: Any, example: Optional[Mapping[str, Any]] = None,
           is_target: bool = False) -> dict[str, Any]:
  """Predictions: {'value': text}; targets: all gold answers and the query."""
  if is_target:
    return {
        "value": [as_text(a) for a in example["answers"]],
        "group": (_as_int(example["idx/passage"]),
                  _as_int(example["idx/query"])),
    }
  return {"value": as_text(answer)}


def _wsc_clean(text: str) -> str:
  text = text.strip().lower()
  return " ".join(w for w in text.split(" ") if w not in _WSC_DETERMINERS)


def wsc_simple(prediction: Any, example: Optional[Mapping[str, Any]] = None,
               is_target: bool = False) -> int:
  """WSC: 1 if the predicted referent is the candidate (span1) else 0.

  Targets are the example's label (1: the candidate is the referent). A
  prediction matches when, ignoring case and determiners, its words are a
  subset or superset of the candidate's words and both or neither contain an
  apostrophe ("Bob" does not match "Bob's hat").

  Args:
    prediction: the generated referent (or the target text).
    example: the preprocessed example, with 'targets_pretokenized' (the
      candidate) and 'label'.
    is_target: whether this is the target.

  Returns:
    0 or 1.
  """
  if is_target:
    return _as_int(example["label"])
  candidate = example.get("targets_pretokenized", example.get("targets"))
  referent = _wsc_clean(as_text(candidate))
  predicted = _wsc_clean(as_text(prediction))
  if ("'" in predicted) != ("'" in referent):
    return 0
  predicted_words = set(predicted.split(" "))
  referent_words = set(referent.split(" "))
  return int(predicted_words <= referent_words or
             referent_words <= predicted_words)


def axg(string_label: Any, example: Optional[Mapping[str, Any]] = None,
        is_target: bool = False) -> dict[str, Any]:
  """AX-g: {'value': class id} plus, for targets, the example 'idx'.

  The index pairs the two examples of a Winogender minimal pair for the
  gender parity metric.

  Args:
    string_label: 'entailment' / 'not_entailment' (else invalid, -1).
    example: the preprocessed example (needed for targets).
    is_target: whether this is the target.

  Returns:
    A dict for `metrics.axg_metrics`.
  """
  result = {"value": string_label_to_class_id(
      string_label, ("entailment", "not_entailment"))}
  if is_target:
    result["idx"] = _as_int(example["idx"])
  return result


def qa(answer: Any, example: Optional[Mapping[str, Any]] = None,
       is_target: bool = False):
  """Extractive QA (T5's `qa`): predictions as text; targets all gold answers.

  Args:
    answer: the generated answer (or the target text).
    example: the preprocessed example, with 'answers' (needed for targets).
    is_target: whether this is the target.

  Returns:
    The predicted text, or for a target the list of gold answers.
  """
  if is_target:
    return [as_text(a) for a in example["answers"]]
  return as_text(answer)
