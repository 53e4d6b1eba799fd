"""Small synthetic tasks the package generates itself (no download), used by
the embedded default (`run.sh`) and the tests.

Each example is a few words drawn from a fixed list; byte-level vocabulary
(seqio.ByteVocabulary), so no SentencePiece file is needed.
- `demo_pretrain`: "first: w1 w2 w3" -> "w1" and "last: w1 w2 w3" -> "w3", the
  skills a frozen model is first taught.
- `demo_last_word`: "w1 w2 w3" -> "w3" with no instruction: the prompt must
  learn to stand in for "last:" (the essence of prompt tuning).
Validation examples use word combinations never seen in training.
"""
import random

import seqio
import tensorflow as tf

WORDS = ("ant bee cat dog eel fox gnu hen ibis jay kiwi lark mole newt owl pig quail ram seal "
         "toad urchin vole wolf yak zebu crab duck frog goat hare").split()
VOCABULARY = seqio.ByteVocabulary()
OUTPUT_FEATURES = {
    "inputs": seqio.Feature(VOCABULARY, add_eos=True),
    "targets": seqio.Feature(VOCABULARY, add_eos=True),
}
SIZES = {"train": 4096, "validation": 256}


def _examples(split, mode, seed):
  """Deterministic examples; word triples are hashed into train/validation."""
  rng = random.Random(f"{seed}-{split}-{mode}")
  out = []
  while len(out) < SIZES[split]:
    words = rng.sample(WORDS, rng.choice([3, 4]))
    in_validation = sum(map(ord, " ".join(words))) % 8 == 0
    if in_validation != (split == "validation"):
      continue
    task = mode if mode != "pretrain" else rng.choice(["first", "last"])
    target = words[0] if task == "first" else words[-1]
    prefix = "" if mode == "last_word" else f"{task}: "
    out.append({"inputs": prefix + " ".join(words), "targets": target})
  return out


def _source(mode):
  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    examples = _examples(split, mode, 0)
    return tf.data.Dataset.from_tensor_slices({
        "inputs": [e["inputs"] for e in examples], "targets": [e["targets"] for e in examples]})
  return seqio.FunctionDataSource(dataset_fn, splits=tuple(SIZES),
                                  num_input_examples=dict(SIZES))


def exact_match(targets, predictions):
  right = sum(t == p for t, p in zip(targets, predictions))
  return {"accuracy": 100.0 * right / max(len(targets), 1)}


for _mode in ("pretrain", "last_word"):
  if f"demo_{_mode}" not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        f"demo_{_mode}", source=_source(_mode),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=OUTPUT_FEATURES, metric_fns=[exact_match])
