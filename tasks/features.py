"""Output features (vocabulary) shared by the tasks in `prompt_tuning.tasks`.

The default vocabulary is T5's `cc_all.32000` SentencePiece model with 100
sentinel ids (32,128 ids), as used by T5, T5 1.1 and the LM-adapted T5 1.1
checkpoints. `seqio.SentencePieceVocabulary` only reads the model file on first
use, so registering tasks needs no file access. Set the environment variable
`PT_VOCABULARY_PATH` (before importing the task modules) to read a local copy
of the same model instead of the gs:// one, e.g. on a machine without GCS.
"""
import os

import seqio

DEFAULT_VOCABULARY_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
VOCABULARY_PATH_ENV = "PT_VOCABULARY_PATH"
EXTRA_IDS = 100


def vocabulary_path() -> str:
  """The SentencePiece model path: $PT_VOCABULARY_PATH, else T5's gs:// one."""
  return os.environ.get(VOCABULARY_PATH_ENV) or DEFAULT_VOCABULARY_PATH


def get_vocabulary() -> seqio.SentencePieceVocabulary:
  """A (lazily loaded) T5 vocabulary read from `vocabulary_path()`."""
  return seqio.SentencePieceVocabulary(vocabulary_path(), extra_ids=EXTRA_IDS)


def get_output_features() -> dict[str, seqio.Feature]:
  """T5's text-to-text output features: 'inputs' and 'targets', both with EOS."""
  vocabulary = get_vocabulary()
  return {
      "inputs": seqio.Feature(
          vocabulary=vocabulary, add_eos=True, required=False),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


# Built once at import time; every task registered by this package shares it.
DEFAULT_OUTPUT_FEATURES = get_output_features()
