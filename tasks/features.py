"""Output features (vocabulary) of the tasks in `prompt_tuning.tasks`.

The tasks use the vocabulary they are configured with
(`registration.configure`, called by pt-train / pt-eval with the run's
`VOCABULARY`). Until then they use the default: T5's `cc_all.32000`
SentencePiece model with 100 sentinel ids (32,128 ids), as used by T5, T5 1.1
and the LM-adapted T5 1.1 checkpoints. The environment variable
`PT_VOCABULARY_PATH` is a user-facing default only: it names a local copy of
that model (e.g. on a machine without GCS), read where the default is computed,
i.e. when the tasks register without a configured vocabulary. A configured
vocabulary always wins over it.

`seqio.SentencePieceVocabulary` only reads the model file on first use, so
registering tasks needs no file access.
"""
import os
from typing import Optional

import seqio

DEFAULT_VOCABULARY_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
VOCABULARY_PATH_ENV = "PT_VOCABULARY_PATH"
EXTRA_IDS = 100


def default_vocabulary_path() -> str:
  """The default SentencePiece model: $PT_VOCABULARY_PATH, else T5's gs:// one."""
  return os.environ.get(VOCABULARY_PATH_ENV) or DEFAULT_VOCABULARY_PATH


def default_vocabulary() -> seqio.SentencePieceVocabulary:
  """T5's vocabulary (lazily loaded) read from `default_vocabulary_path()`."""
  return seqio.SentencePieceVocabulary(default_vocabulary_path(), extra_ids=EXTRA_IDS)


_SET_VOCABULARY = ("--gin.seqio.SentencePieceVocabulary.sentencepiece_model_file="
                   "\"'/path/to/spiece.model'\"")


def vocabulary_problem(vocabulary: seqio.Vocabulary) -> Optional[str]:
  """Why a SentencePiece vocabulary's model file cannot be used, in one line
  naming the file; None when it loads (or needs no file).

  Loads the model (seqio keeps it loaded), so that a bad file is reported
  before any dataset is built, not from inside tf.data.
  """
  if not isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return None
  path = vocabulary.sentencepiece_model_file
  remote = "://" in path
  if not remote and not os.path.exists(path):
    return (f"VOCABULARY file {path} does not exist: give a SentencePiece model with "
            f"{_SET_VOCABULARY}")
  if not remote and os.path.isdir(path):
    return (f"VOCABULARY file {path} is a folder, not a SentencePiece model: give the model "
            f"file with {_SET_VOCABULARY}")
  try:
    vocabulary.tokenizer  # pylint: disable=pointless-statement
  except Exception as e:  # pylint: disable=broad-except  (tf, protobuf and sentencepiece errors)
    text = str(e).strip()
    reason = text.splitlines()[0] if text else type(e).__name__
    if remote and "Error parsing" not in reason:
      return (f"VOCABULARY file {path} could not be read ({reason}): without access to it, "
              f"use a local copy with {_SET_VOCABULARY}")
    return (f"VOCABULARY file {path} is not a SentencePiece model ({reason}): give one with "
            f"{_SET_VOCABULARY}")
  return None


def output_features(vocabulary: Optional[seqio.Vocabulary] = None) -> dict[str, seqio.Feature]:
  """T5's text-to-text output features: 'inputs' and 'targets', both with EOS.

  Args:
    vocabulary: the vocabulary of both features; None for `default_vocabulary()`.

  Returns:
    {'inputs': Feature, 'targets': Feature}.
  """
  vocabulary = vocabulary if vocabulary is not None else default_vocabulary()
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }
