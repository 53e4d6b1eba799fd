"""The shipped tasks take their vocabulary and SuperGLUE folder from explicit
configuration (`data.configure_sources` -> `registration.configure`), never from
an environment variable set between modules: task modules imported before the
call follow it, the latest call wins, mixtures follow their tasks, and no
environment variable is set."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

seqio = pytest.importorskip("seqio")

from prompt_tuning import data  # pylint: disable=g-import-not-at-top,g-bad-import-order
from prompt_tuning.tasks import features  # pylint: disable=g-import-not-at-top
from prompt_tuning.tasks import glue  # pylint: disable=g-import-not-at-top,unused-import
from prompt_tuning.tasks import labels  # pylint: disable=g-import-not-at-top
from prompt_tuning.tasks import registration  # pylint: disable=g-import-not-at-top
from prompt_tuning.tasks import super_glue  # pylint: disable=g-import-not-at-top,unused-import

ENV_VARS = ("PT_VOCABULARY_PATH", "SUPERGLUE_DATA_DIR")
CB = "super_glue_cb_v102"


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
  """No user defaults in the environment; the tasks' settings restored after."""
  for name in ENV_VARS:
    monkeypatch.delenv(name, raising=False)
  before = registration.settings()
  yield
  registration.configure(before.vocabulary, before.superglue_data_dir)


def _release(root, hypothesis):
  """A one-folder SuperGLUE release: CB/val.jsonl with one example."""
  (root / "CB").mkdir(parents=True)
  row = {"premise": "The cat sat.", "hypothesis": hypothesis, "label": "neutral", "idx": 0}
  (root / "CB" / "val.jsonl").write_text(json.dumps(row) + "\n")
  return str(root)


def _cb_example():
  task = seqio.get_mixture_or_task(CB)
  (example,) = task.get_dataset(split="validation", sequence_length=None,
                                shuffle=False).as_numpy_iterator()
  return example


def _vocabularies(name):
  task = seqio.get_mixture_or_task(name)
  return task.output_features["inputs"].vocabulary, task.output_features["targets"].vocabulary


def test_modules_imported_before_configure_follow_it(tmp_path):
  env = dict(os.environ)
  vocab = seqio.ByteVocabulary(extra_ids=3)
  folder = _release(tmp_path, "A cat sat.")
  settings = data.configure_sources(vocab, folder)
  assert settings == registration.Settings(vocab, folder)
  names = registration.task_names()
  assert {CB, "taskless_glue_sst2_v002", "super_glue_wsc_v102_simple_eval"} <= set(names)
  for name in names:
    assert _vocabularies(name) == (vocab, vocab)
    assert seqio.get_mixture_or_task(name).output_features["inputs"].vocabulary is vocab
    source = seqio.get_mixture_or_task(name).source
    if "super_glue" in name:
      assert source.data_dir == folder
  # The data really come from the folder, tokenized with the vocabulary.
  example = _cb_example()
  assert example["inputs_pretokenized"].decode() == (
      "cb hypothesis: A cat sat. premise: The cat sat.")
  assert example["inputs"].tolist() == vocab.encode(
      "cb hypothesis: A cat sat. premise: The cat sat.") + [1]  # EOS.
  assert dict(os.environ) == env  # Nothing set, nothing removed.


def test_latest_configuration_wins(tmp_path):
  first, second = seqio.ByteVocabulary(), seqio.ByteVocabulary(extra_ids=10)
  folder_a = _release(tmp_path / "a", "First.")
  folder_b = _release(tmp_path / "b", "Second.")
  data.configure_sources(first, folder_a)
  assert _cb_example()["inputs_pretokenized"].decode().startswith("cb hypothesis: First.")
  data.configure_sources(second, folder_b)
  assert _vocabularies(CB) == (second, second)
  assert _vocabularies("glue_rte_v002") == (second, second)
  assert _cb_example()["inputs_pretokenized"].decode().startswith("cb hypothesis: Second.")
  # None means the defaults again, not "keep the last": T5's vocabulary, TFDS.
  settings = data.configure_sources(None, None)
  vocabulary, _ = _vocabularies(CB)
  assert isinstance(vocabulary, seqio.SentencePieceVocabulary)
  assert vocabulary.sentencepiece_model_file == features.DEFAULT_VOCABULARY_PATH
  assert settings.superglue_data_dir is None
  assert seqio.get_mixture_or_task(CB).source.data_dir is None
  assert not set(ENV_VARS) & set(os.environ)


def test_real_t5_vocabulary_then_bytes(tmp_path, t5_vocab_path):
  spm = seqio.SentencePieceVocabulary(str(t5_vocab_path), extra_ids=100)
  folder = _release(tmp_path, "A cat sat.")
  data.configure_sources(spm, folder)
  example = _cb_example()
  assert spm.decode(example["inputs"][:-1].tolist()) == example["inputs_pretokenized"].decode()
  assert len(example["inputs"]) < len(example["inputs_pretokenized"])  # Pieces, not bytes.
  data.configure_sources(seqio.ByteVocabulary(), folder)
  assert len(_cb_example()["inputs"]) == len(example["inputs_pretokenized"]) + 1  # Bytes, EOS.


def test_same_configuration_keeps_the_registered_tasks(tmp_path, t5_vocab_path):
  folder = _release(tmp_path, "A cat sat.")
  data.configure_sources(seqio.SentencePieceVocabulary(str(t5_vocab_path), extra_ids=100), folder)
  tasks = {name: seqio.get_mixture_or_task(name) for name in registration.task_names()}
  # An equal vocabulary built again (gin builds one per reference) changes nothing.
  data.configure_sources(seqio.SentencePieceVocabulary(str(t5_vocab_path), extra_ids=100), folder)
  assert all(seqio.get_mixture_or_task(name) is task for name, task in tasks.items())


def test_reregistered_tasks_keep_their_definition(tmp_path):
  data.configure_sources(seqio.ByteVocabulary(), _release(tmp_path, "A cat sat."))
  names = registration.task_names()

  def definition(name):
    task = seqio.get_mixture_or_task(name)
    class_labels = labels.get_class_labels(name)
    # The postprocessor compared by what it does: each label to its class id.
    class_ids = [task.postprocess_fn(label, example={}, is_target=False)
                 for label in class_labels or []]
    return (task.preprocessors, task.metric_fns, task.splits, type(task.source), class_labels,
            class_ids)

  before = {name: definition(name) for name in names}
  data.configure_sources(seqio.ByteVocabulary(extra_ids=5), None)
  assert {name: definition(name) for name in names} == before
  assert labels.get_class_labels("super_glue_rte_v102") == ["entailment", "not_entailment"]


def test_mixtures_follow_their_tasks(tmp_path):
  mixtures = registration.mixture_names()
  assert {"super_glue_v102", "taskless_super_glue_v102"} <= set(mixtures)
  rates = {name: {t.name: seqio.get_mixture_or_task(name).get_rate(t)
                  for t in seqio.get_mixture_or_task(name).tasks} for name in mixtures}
  vocab = seqio.ByteVocabulary(extra_ids=7)
  folder = _release(tmp_path, "A cat sat.")
  data.configure_sources(vocab, folder)
  for name in mixtures:
    mixture = seqio.get_mixture_or_task(name)
    for task in mixture.tasks:
      assert task is seqio.TaskRegistry.get(task.name)  # The task registered now.
      assert task.output_features["targets"].vocabulary is vocab
      if "super_glue" in task.name:
        assert task.source.data_dir == folder
    assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == rates[name]


def test_outside_mixture_of_shipped_tasks_is_an_error(tmp_path):
  """A mixture registered directly with seqio would keep the old tasks: refused."""
  folder = _release(tmp_path, "A cat sat.")
  old = seqio.ByteVocabulary()
  data.configure_sources(old, folder)
  seqio.MixtureRegistry.add("_outside_mixture", [("glue_rte_v002", 1.0)])
  try:
    data.configure_sources(seqio.ByteVocabulary(), folder)  # The same settings: fine.
    with pytest.raises(data.DataError, match=r"_outside_mixture.*add_mixture"):
      data.configure_sources(seqio.ByteVocabulary(extra_ids=1), folder)
    assert _vocabularies("glue_rte_v002") == (old, old)  # Nothing changed.
    assert registration.settings().vocabulary == old
  finally:
    seqio.MixtureRegistry.remove("_outside_mixture")


def test_not_a_vocabulary_is_an_error():
  with pytest.raises(data.DataError, match="seqio.Vocabulary"):
    data.configure_sources("/path/to/spiece.model")


def test_fresh_process_env_defaults_then_configuration(tmp_path, t5_vocab_path):
  """In a new process: without configure, the tasks use the user's environment
  defaults; a module imported before configure_sources and one imported after
  both get the configured values; the environment is left as it was."""
  script = textwrap.dedent(f"""
      import os
      import seqio
      from prompt_tuning.tasks import glue  # Before configure_sources.
      from prompt_tuning import data
      env = dict(os.environ)
      task = seqio.get_mixture_or_task("glue_rte_v002")
      vocabulary = task.output_features["inputs"].vocabulary
      assert vocabulary.sentencepiece_model_file == {str(t5_vocab_path)!r}
      vocab = seqio.ByteVocabulary(extra_ids=7)
      data.configure_sources(vocab, {str(tmp_path)!r})
      from prompt_tuning.tasks import super_glue  # After configure_sources.
      for name in ("glue_rte_v002", "super_glue_rte_v102", "super_glue_v102"):
        task = seqio.get_mixture_or_task(name)
        assert task.output_features["inputs"].vocabulary is vocab, name
      assert seqio.get_mixture_or_task("super_glue_rte_v102").source.data_dir == {str(tmp_path)!r}
      assert dict(os.environ) == env
      print("ok")
      """)
  env = dict(os.environ, PT_VOCABULARY_PATH=str(t5_vocab_path), TF_CPP_MIN_LOG_LEVEL="3",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
