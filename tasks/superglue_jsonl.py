"""Reads the official SuperGLUE JSONL release in the TFDS `super_glue` layout.

The examples have exactly the feature names, dtypes, label ids and `idx`
handling of the TFDS builder `super_glue/<config>:1.0.2`
(tensorflow_datasets/text/super_glue.py), so the same text preprocessors work
on either source:

* text features are strings, `idx` an int32 (a dict of int32 for MultiRC and
  ReCoRD), `label` an int64 id into the config's label names (-1 when the row
  has no label, i.e. in the test split);
* MultiRC is flattened to one example per answer option;
* ReCoRD gives one example per query, with `entities` the sorted unique
  entity strings (`passage[start:end + 1]`) and `answers` the sorted unique
  answer strings; the passage text is kept verbatim (with its '@highlight'
  lines, as TFDS keeps it);
* WSC copies the `target` spans to the top level, and the `wsc.fixed` config
  applies the same span repairs as TFDS.

Layout of the release (one folder per task, as in the SuperGLUE zip):
`BoolQ/train.jsonl`, `BoolQ/val.jsonl`, `BoolQ/test.jsonl`, ...,
`AX-b/AX-b.jsonl`, `AX-g/AX-g.jsonl` (the diagnostics only have a test split).
"""
import io
import json
import os
import re
from typing import Any, Iterator, Mapping, Sequence

import tensorflow as tf

from prompt_tuning.storage import file_utils

# TFDS config -> folder of the official release.
RELEASE_DIRS = {
    "boolq": "BoolQ",
    "cb": "CB",
    "copa": "COPA",
    "multirc": "MultiRC",
    "record": "ReCoRD",
    "rte": "RTE",
    "wic": "WiC",
    "wsc": "WSC",
    "wsc.fixed": "WSC",
    "axb": "AX-b",
    "axg": "AX-g",
}

# TFDS config -> its text features, in the builder's order.
TEXT_FEATURES = {
    "boolq": ("question", "passage"),
    "cb": ("premise", "hypothesis"),
    "copa": ("premise", "choice1", "choice2", "question"),
    "multirc": ("paragraph", "question", "answer"),
    "record": ("passage", "query"),
    "rte": ("premise", "hypothesis"),
    "wic": ("word", "sentence1", "sentence2"),
    "wsc": ("text", "span1_text", "span2_text"),
    "wsc.fixed": ("text", "span1_text", "span2_text"),
    "axb": ("sentence1", "sentence2"),
    "axg": ("premise", "hypothesis"),
}

# Integer (int32) features besides `idx`.
INT_FEATURES = {
    "wic": ("start1", "start2", "end1", "end2"),
    "wsc": ("span1_index", "span2_index"),
    "wsc.fixed": ("span1_index", "span2_index"),
}

# TFDS ClassLabel names per config (ReCoRD has no label).
LABEL_CLASSES = {
    "boolq": ("False", "True"),
    "cb": ("entailment", "contradiction", "neutral"),
    "copa": ("choice1", "choice2"),
    "multirc": ("False", "True"),
    "rte": ("entailment", "not_entailment"),
    "wic": ("False", "True"),
    "wsc": ("False", "True"),
    "wsc.fixed": ("False", "True"),
    "axb": ("entailment", "not_entailment"),
    "axg": ("entailment", "not_entailment"),
}

DIAGNOSTIC_CONFIGS = ("axb", "axg")
SPLIT_FILES = {"train": "train.jsonl", "validation": "val.jsonl",
               "test": "test.jsonl"}


def splits(config: str) -> tuple[str, ...]:
  """The splits of a config: only 'test' for the diagnostics."""
  _check_config(config)
  return ("test",) if config in DIAGNOSTIC_CONFIGS else tuple(SPLIT_FILES)


def split_path(data_dir: str, config: str, split: str) -> str:
  """Path of the JSONL file holding `split` of `config` under `data_dir`."""
  if split not in splits(config):
    raise ValueError(
        f"SuperGLUE {config} has no split {split!r}; splits: {splits(config)}.")
  folder = RELEASE_DIRS[config]
  filename = (f"{folder}.jsonl" if config in DIAGNOSTIC_CONFIGS
              else SPLIT_FILES[split])
  return os.path.join(data_dir, folder, filename)


def element_spec(config: str) -> dict[str, Any]:
  """The tf.TensorSpec structure of one example (as TFDS declares it)."""
  _check_config(config)
  spec = {name: tf.TensorSpec([], tf.string) for name in TEXT_FEATURES[config]}
  for name in INT_FEATURES.get(config, ()):
    spec[name] = tf.TensorSpec([], tf.int32)
  if config == "multirc":
    spec["idx"] = {k: tf.TensorSpec([], tf.int32)
                   for k in ("paragraph", "question", "answer")}
  elif config == "record":
    spec["idx"] = {k: tf.TensorSpec([], tf.int32) for k in ("passage", "query")}
    spec["entities"] = tf.TensorSpec([None], tf.string)
    spec["answers"] = tf.TensorSpec([None], tf.string)
  else:
    spec["idx"] = tf.TensorSpec([], tf.int32)
  if config != "record":
    spec["label"] = tf.TensorSpec([], tf.int64)
  return spec


def row_to_examples(config: str, row: Mapping[str, Any]) -> Iterator[dict]:
  """Converts one JSON row of the release into TFDS-layout example dicts."""
  _check_config(config)
  if config == "multirc":
    paragraph = row["passage"]
    for question in paragraph["questions"]:
      for answer in question["answers"]:
        yield {
            "paragraph": paragraph["text"],
            "question": question["question"],
            "answer": answer["text"],
            "idx": {"paragraph": row["idx"], "question": question["idx"],
                    "answer": answer["idx"]},
            "label": _label_id(config, answer.get("label"), bool),
        }
  elif config == "record":
    passage = row["passage"]
    text = passage["text"]
    entities = sorted({text[e["start"]:e["end"] + 1]
                       for e in passage["entities"]})
    for qa in row["qas"]:
      yield {
          "passage": text,
          "query": qa["query"],
          "entities": entities,
          "answers": sorted({a["text"] for a in qa.get("answers", ())}),
          "idx": {"passage": row["idx"], "query": qa["idx"]},
      }
  else:
    flat = dict(row)
    if config.startswith("wsc"):
      flat.update(row["target"])
    example = {name: flat[name] for name in TEXT_FEATURES[config]}
    example.update({name: flat[name] for name in INT_FEATURES.get(config, ())})
    if config == "wsc.fixed":
      _fix_wsc_spans(example)
    example["idx"] = row["idx"]
    example["label"] = _label_id(config, row.get("label"))
    yield example


class RecordError(ValueError):
  """A line of a release file that is not a complete record; names the file and line."""


def read_examples(path: str, config: str) -> list[dict]:
  """All TFDS-layout examples of one JSONL file, in file order.

  Raises:
    RecordError: a line is not JSON, or its record lacks a field (or holds one
      of the wrong type or value); the message gives the file, the line number
      and the field.
  """
  examples = []
  with io.StringIO(file_utils.read_bytes(path).decode("utf-8"), newline=None) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path} line {number}"
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        reason = re.sub(r"\bline \d+ column", "column", str(e))  # the line is `number`
        raise RecordError(f"{where} is not valid JSON ({reason}): the file is damaged or not "
                          "the SuperGLUE release's") from None
      try:
        if not isinstance(row, dict):
          raise TypeError(f"a JSON {type(row).__name__}, not an object")
        examples.extend(row_to_examples(config, row))
      except KeyError as e:
        raise RecordError(f"{where}: the {RELEASE_DIRS[config]} record lacks the field "
                          f"{e.args[0]!r}") from None
      except (TypeError, ValueError, IndexError, AttributeError) as e:
        text = str(e).strip()
        reason = text.splitlines()[0] if text else type(e).__name__
        raise RecordError(f"{where}: not a valid {RELEASE_DIRS[config]} record ({reason})"
                          ) from None
  return examples


def examples_to_dataset(examples: Sequence[Mapping[str, Any]],
                        config: str) -> tf.data.Dataset:
  """An in-memory tf.data.Dataset of TFDS-layout examples of `config`."""
  spec = element_spec(config)
  columns = {}
  for name, feature_spec in spec.items():
    if isinstance(feature_spec, dict):
      columns[name] = {
          k: tf.constant([ex[name][k] for ex in examples], s.dtype, shape=[
              len(examples)]) for k, s in feature_spec.items()}
    elif feature_spec.shape.rank == 1:
      values = [v for ex in examples for v in ex[name]]
      columns[name] = tf.RaggedTensor.from_row_lengths(
          tf.constant(values, tf.string, shape=[len(values)]),
          tf.constant([len(ex[name]) for ex in examples], tf.int64,
                      shape=[len(examples)]))
    else:
      columns[name] = tf.constant([ex[name] for ex in examples],
                                  feature_spec.dtype, shape=[len(examples)])
  ds = tf.data.Dataset.from_tensor_slices(columns)
  # Slices of a ragged column arrive as RaggedTensorSpec; make them dense.
  return ds.map(lambda ex: tf.nest.map_structure(tf.identity, ex))


def _label_id(config: str, label: Any, cast=None) -> int:
  """The ClassLabel id of a raw label, as the TFDS builder encodes it."""
  if label is None:
    return -1  # Unlabelled (test) example.
  if cast is not None:
    label = cast(label)
  if config == "copa":
    name = "choice2" if label else "choice1"
  elif isinstance(label, bool):
    name = "True" if label else "False"
  else:
    name = str(label)
  try:
    return LABEL_CLASSES[config].index(name)
  except ValueError:
    raise ValueError(
        f"SuperGLUE {config}: label {label!r} is not one of "
        f"{LABEL_CLASSES[config]}.") from None


def _fix_wsc_spans(ex: dict) -> None:
  """Repairs spans that are not substrings of the text (TFDS `wsc.fixed`).

  Same repairs as the TFDS builder, including its quirk for the 'theyscold'
  example: the span index is moved to 10 but the text is left unchanged.

  Args:
    ex: a WSC example (modified in place).
  """
  for key in ("span1", "span2"):
    text = ex[key + "_text"]
    index = ex[key + "_index"]
    if text in ex["text"]:
      continue
    if text in ("Kamenev and Zinoviev", "Kamenev, Zinoviev, and Stalin"):
      continue  # The subjects have intervening text; not repairable.
    if "theyscold" in text:
      ex["span2_index"] = 10
    first_word = ex["text"].split()[index]
    if first_word[0].islower():
      text = text[0].lower() + text[1:]
    else:
      text = text[0].upper() + text[1:]
    ex[key + "_text"] = text.rstrip(".").replace("\n", " ")


def _check_config(config: str) -> None:
  if config not in RELEASE_DIRS:
    raise ValueError(
        f"Unknown SuperGLUE config {config!r}; known: {sorted(RELEASE_DIRS)}.")
