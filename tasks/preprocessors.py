"""Text preprocessors: (Super)GLUE examples to T5's text-to-text format.

They reproduce the formats of T5 (Raffel et al., 2020, Appendix D; T5's
`glue`, `stsb`, `record` and `wsc_simple` preprocessors) on examples in the
TFDS `glue` / `super_glue` layout:

* `glue_text`: '<benchmark> <key1>: <value1> <key2>: <value2> ...' with the
  label name as target ('<unk>' for unlabelled examples). Without explicit
  `feature_names` the keys are all features but `label` and `idx`, sorted.
* `stsb`: the similarity score rounded to the nearest 0.2, as a string.
* `record`: one example per gold answer (one '<unk>' example when there is
  none), every copy carrying all `answers` for evaluation.
* `wsc_simple`: the pronoun marked with '*', the candidate referent as target.
* `remove_first_text_token`: drops the leading task-name token ('taskless').
* `squad`: extractive QA as T5's `squad` preprocessor, 'question: <q>
  context: <c>' -> the first gold answer (SQuAD and the MRQA sets).
* `rename_features`: features under other names (e.g. MRPC's sentences as
  QQP's questions for the QQP <-> MRPC transfer tasks).
"""
from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
UNKNOWN_LABEL = "<unk>"


def _label_name(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
  """The name of class id `label`, or '<unk>' for -1 (no label)."""
  label = tf.cast(label, tf.int64)
  name = tf.gather(tf.constant(list(label_names)), tf.maximum(label, 0))
  return tf.where(label < 0, tf.constant(UNKNOWN_LABEL), name)


@seqio.map_over_dataset
def glue_text(x: Mapping[str, tf.Tensor], benchmark_name: str,
              label_names: Sequence[str],
              feature_names: Optional[Sequence[str]] = None):
  """A GLUE/SuperGLUE classification example in T5's text-to-text format.

  E.g. {'premise': 'P', 'hypothesis': 'H', 'label': 0, 'idx': 3} with
  benchmark_name='rte' gives {'inputs': 'rte hypothesis: H premise: P',
  'targets': 'entailment', 'idx': 3}.

  Args:
    x: an example in the TFDS layout.
    benchmark_name: the leading task-name token.
    label_names: label names in class-id order.
    feature_names: the features to write, in order; default all features
      except 'label' and 'idx', sorted by name.

  Returns:
    {'inputs', 'targets'} and the index: 'idx', or for MultiRC 'idx/paragraph',
    'idx/question', 'idx/answer'.
  """
  keys = feature_names or sorted(set(x) - {"label", "idx"})
  parts = [benchmark_name]
  for key in keys:
    parts += [f"{key}:", x[key]]
  inputs = tf.strings.join(parts, separator=" ")
  ex = {}
  if benchmark_name == "multirc":
    # Remove the HTML markup of MultiRC paragraphs.
    inputs = tf.strings.regex_replace(inputs, "<br>", " ")
    inputs = tf.strings.regex_replace(inputs, "<(/)?b>", "")
    for key in ("paragraph", "question", "answer"):
      ex[f"idx/{key}"] = x["idx"][key]
  else:
    ex["idx"] = x["idx"]
  ex["inputs"] = inputs
  ex["targets"] = _label_name(x["label"], label_names)
  return ex


@seqio.map_over_dataset
def rekey_axb(x: Mapping[str, tf.Tensor]):
  """AX-b (sentence1/sentence2) renamed to RTE's premise/hypothesis."""
  return {"premise": x["sentence1"], "hypothesis": x["sentence2"],
          "label": x["label"], "idx": x["idx"]}


@seqio.map_over_dataset
def stsb(x: Mapping[str, tf.Tensor]):
  """STS-B with the score rounded to a multiple of 0.2 as the target string.

  E.g. {'sentence1': 'A', 'sentence2': 'B', 'label': 1.83} gives
  {'inputs': 'stsb sentence1: A sentence2: B', 'targets': '1.8'}.

  Args:
    x: a TFDS glue/stsb example.

  Returns:
    {'inputs', 'targets', 'idx'}.
  """
  inputs = tf.strings.join(
      ["stsb sentence1:", x["sentence1"], "sentence2:", x["sentence2"]],
      separator=" ")
  score = tf.round(tf.cast(x["label"], tf.float32) * 5) / 5
  return {"inputs": inputs,
          "targets": tf.strings.as_string(score, precision=1),
          "idx": x["idx"]}


def record(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """ReCoRD to text-to-text, one example per gold answer.

  'record query: <query> entities: <e1>, <e2>, ... passage: <passage>' where
  each '\\n@highlight\\n' of the passage becomes '. ' (or ' ' after sentence
  punctuation). Unlabelled examples give one example with target '<unk>'.

  Args:
    dataset: TFDS super_glue/record examples.

  Returns:
    A dataset of {'inputs', 'targets', 'answers', 'idx/passage', 'idx/query'}.
  """

  def expand(x):
    passage = tf.strings.regex_replace(
        x["passage"], r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
    passage = tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")
    inputs = tf.strings.join([
        "record query:", x["query"], "entities:",
        tf.strings.reduce_join(x["entities"], separator=", "), "passage:",
        passage
    ], separator=" ")
    answers = x["answers"]
    targets = tf.cond(tf.size(answers) > 0, lambda: answers,
                      lambda: tf.constant([UNKNOWN_LABEL]))
    copies = tf.size(targets)

    def repeat(t):
      return tf.fill([copies], t)

    return {
        "inputs": repeat(inputs),
        "targets": targets,
        "answers": tf.broadcast_to(answers[tf.newaxis],
                                   [copies, tf.size(answers)]),
        "idx/passage": repeat(x["idx"]["passage"]),
        "idx/query": repeat(x["idx"]["query"]),
    }

  return dataset.map(expand, num_parallel_calls=AUTOTUNE).unbatch()


# Two WSC texts whose pronoun is not the word at span2_index; T5 masks them by
# hand (the first has 'him,"' as the word, the second points at 'use').
_WSC_MASKED_BY_HAND = {
    ('The boy continued to whip the pony , and eventually the pony threw him '
     'over. John laughed out quite loud. "Good for him," he said. '):
        ('The boy continued to whip the pony , and eventually the pony threw '
         'him over. John laughed out quite loud. "Good for X ," he said.'),
    ('When they had eventually calmed down a bit , and had gotten home, '
     'Mr. Farley put the magic pebble in an iron safe . Some day they might '
     'want to use it , but really for now, what more could they wish for?'):
        ('When they had eventually calmed down a bit , and had gotten home, '
         'Mr. Farley put the magic pebble in an iron safe . Some day they '
         'might want to use X , but really for now, what more could they '
         'wish for?'),
}


def _wsc_masked_text(x: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """The WSC text with the word at span2_index (the pronoun) replaced by X."""
  words = tf.strings.split(x["text"], sep=" ")
  index = tf.cast(x["span2_index"], tf.int32)
  masked = tf.strings.join([
      tf.strings.reduce_join(words[:index], separator=" "), "X",
      tf.strings.reduce_join(words[index + 1:], separator=" ")
  ], separator=" ")
  for text, by_hand in _WSC_MASKED_BY_HAND.items():
    masked = tf.where(tf.equal(x["text"], text), tf.constant(by_hand), masked)
  return masked


def wsc_simple(dataset: tf.data.Dataset, label: str = "wsc:",
               correct_referent_only: bool = False) -> tf.data.Dataset:
  """WSC as T5's referent generation: mark the pronoun, predict the referent.

  E.g. text 'Mitchell asked Tom if he could lend some money.' with span1 'Tom'
  and span2 'he' (word 4) gives {'inputs': 'wsc: Mitchell asked Tom if *he*
  could lend some money.', 'targets': 'Tom'}.

  Args:
    dataset: TFDS super_glue/wsc.fixed examples.
    label: the leading task-name token.
    correct_referent_only: keep only examples whose candidate is the referent
      (label True): the training set of T5's WSC.

  Returns:
    A dataset of {'inputs', 'targets', 'label', 'idx'}.
  """

  def to_text(x):
    # Escape backslashes: the pronoun is used in a regex rewrite string.
    pronoun = tf.strings.regex_replace(x["span2_text"], r"\\", r"\\\\")
    marked = tf.strings.regex_replace(
        _wsc_masked_text(x), " X ",
        tf.strings.join([" *", pronoun, "* "]))
    return {
        "inputs": tf.strings.join([label, marked], separator=" "),
        "targets": tf.reshape(x["span1_text"], []),
        "label": x.get("label", tf.constant(0, tf.int64)),
        "idx": x["idx"],
    }

  if correct_referent_only:
    dataset = dataset.filter(lambda x: tf.equal(x["label"], 1))
  return dataset.map(to_text, num_parallel_calls=AUTOTUNE)


@seqio.map_over_dataset
def remove_first_text_token(x: Mapping[str, tf.Tensor], key: str = "inputs"):
  """Drops the leading task-name token: 'rte hypothesis: ...' -> 'hypothesis: ...'."""
  ex = dict(x)
  ex[key] = tf.strings.regex_replace(x[key], r"^[^ ]* ", "",
                                     replace_global=False)
  return ex


@seqio.map_over_dataset
def rename_features(x: Mapping[str, tf.Tensor], names: Mapping[str, str]):
  """The example with features renamed old -> new; the others kept.

  E.g. names={'sentence1': 'question1', 'sentence2': 'question2'} writes an
  MRPC example with QQP's feature names.

  Args:
    x: an example.
    names: old name -> new name.

  Returns:
    The renamed example.
  """
  return {names.get(key, key): value for key, value in x.items()}


def pad_punctuation(text: tf.Tensor) -> tf.Tensor:
  r"""Spaces around every non-word character, whitespace runs as one space (T5's).

  T5's `_pad_punctuation` of its SQuAD task: the regex `(\W)` -> ` \1 `, where
  RE2's `\W` is any character but ASCII letters, digits and '_' (so 'François'
  becomes 'Fran ç ois', as in T5), then `\s+` -> ' '.

  Args:
    text: a string tensor (any shape).

  Returns:
    The padded text.
  """
  text = tf.strings.regex_replace(text, r"(\W)", r" \1 ")
  return tf.strings.regex_replace(text, r"\s+", " ")


def _string_join(parts) -> tf.Tensor:
  """Joined with spaces, whitespace runs collapsed (T5's `_string_join`)."""
  return tf.strings.regex_replace(tf.strings.join(parts, separator=" "), r"\s+", " ")


@seqio.map_over_dataset
def squad(x: Mapping[str, tf.Tensor]):
  """Extractive QA in T5's text-to-text format (T5's `squad` preprocessor).

  E.g. {'id': 'q1', 'question': 'Who won?', 'context': 'The Broncos won.',
  'answers': ['The Broncos', 'Broncos']} gives {'inputs': 'question: Who won ?
  context: The Broncos won . ', 'targets': 'The Broncos', 'answers': ['The
  Broncos', 'Broncos'], ...}: question, context and answers have their
  punctuation padded (`pad_punctuation`), the target is the first answer ('' if
  there is none) and every answer is kept for the metrics.

  Args:
    x: an example of `qa_data.FEATURES` (id, question, context, answers).

  Returns:
    {'inputs', 'targets', 'id', 'question', 'context', 'answers'}.
  """
  answers = pad_punctuation(x["answers"])
  question = pad_punctuation(x["question"])
  context = pad_punctuation(x["context"])
  first = tf.concat([answers, tf.constant([""])], axis=0)[0]
  return {
      "inputs": _string_join(["question:", question, "context:", context]),
      "targets": first,
      "id": x["id"],
      "question": question,
      "context": context,
      "answers": answers,
  }
