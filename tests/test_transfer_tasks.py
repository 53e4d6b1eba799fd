"""Zero-shot transfer tasks: SQuAD v1.1 and MRQA 2019 (`tasks/qa.py`) read from
small hand-made files in the official formats, their T5 text-to-text format,
SQuAD's EM / F1 against hand-computed values, clear errors for missing data;
and the QQP <-> MRPC tasks (`tasks/glue_transfer.py`)."""
import gzip
import json

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")
tf = pytest.importorskip("tensorflow")

from prompt_tuning import data  # pylint: disable=g-import-not-at-top,g-bad-import-order
from prompt_tuning.tasks import glue_transfer  # pylint: disable=g-import-not-at-top
from prompt_tuning.tasks import labels  # pylint: disable=g-import-not-at-top
from prompt_tuning.tasks import metrics  # pylint: disable=g-import-not-at-top
from prompt_tuning.tasks import qa  # pylint: disable=g-import-not-at-top
from prompt_tuning.tasks import qa_data  # pylint: disable=g-import-not-at-top
from prompt_tuning.tasks import registration  # pylint: disable=g-import-not-at-top

ENV_VARS = ("PT_VOCABULARY_PATH", "SUPERGLUE_DATA_DIR", "SQUAD_DATA_DIR", "MRQA_DATA_DIR")

# An out-of-domain dev file (BioASQ): two contexts, three questions; the fields
# TFDS reads (tokens, detected answers) are there as in the release.
BIOASQ = [
    {"header": {"dataset": "BioASQ", "split": "dev"}},
    {"id": "c1", "context": "  The cat sat on the mat. It purred.\n",
     "context_tokens": [["The", 2], ["cat", 6]],
     "qas": [
         {"qid": "q1", "question": "Where did the cat sit? ", "question_tokens": [["Where", 0]],
          "answers": ["the mat", "mat"],
          "detected_answers": [{"text": "the mat", "char_spans": [[21, 27]],
                                "token_spans": [[5, 6]]}]},
         {"qid": "q2", "question": "What did it do?", "question_tokens": [["What", 0]],
          "answers": ["purred"],
          "detected_answers": [{"text": "purred", "char_spans": [[32, 37]],
                                "token_spans": [[8, 8]]}]}]},
    {"id": "c2", "context": "Denver Broncos beat the Carolina Panthers (24-10).",
     "context_tokens": [["Denver", 0]],
     "qas": [{"qid": "q3", "question": "Who won Super Bowl 50?", "question_tokens": [["Who", 0]],
              "answers": ["Denver Broncos", "Broncos"],
              "detected_answers": [{"text": "Denver Broncos", "char_spans": [[0, 13]],
                                    "token_spans": [[0, 1]]}]}]},
]

SQUAD_DEV = {"version": "1.1", "data": [{"title": "Super_Bowl_50", "paragraphs": [{
    "context": "Super Bowl 50 was won by the Denver Broncos.",
    "qas": [
        {"id": "s1", "question": "Who won?",
         "answers": [{"text": "Denver Broncos", "answer_start": 29},
                     {"text": "the Denver Broncos", "answer_start": 25}]},
        {"id": "s2", "question": "Which Super Bowl?",
         "answers": [{"text": "Super Bowl 50", "answer_start": 0}]},
        # The same id again (as in some SQuAD-like files): its answers are added.
        {"id": "s1", "question": "Who won?",
         "answers": [{"text": "Broncos", "answer_start": 36}]}]}]}]}


def _write_mrqa(path, rows, compress=True):
  path.parent.mkdir(parents=True, exist_ok=True)
  text = "".join(json.dumps(r) + "\n" for r in rows)
  if compress:
    with gzip.open(path, "wt", encoding="utf-8") as f:
      f.write(text)
  else:
    path.write_text(text, encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """(squad folder, mrqa folder) in the official layouts."""
  root = tmp_path_factory.mktemp("qa")
  mrqa = root / "mrqa"
  _write_mrqa(mrqa / "dev" / "BioASQ.jsonl.gz", BIOASQ)
  # An in-domain set, unzipped: train only (its dev file is absent).
  train = [{"header": {"dataset": "NewsQA", "split": "train"}}, BIOASQ[2]]
  _write_mrqa(mrqa / "train" / "NewsQA.jsonl", train, compress=False)
  (mrqa / "dev" / "DROP.jsonl.gz").write_text("this is not an MRQA file\n")
  squad = root / "squad"
  squad.mkdir()
  (squad / "dev-v1.1.json").write_text(json.dumps(SQUAD_DEV))
  return str(squad), str(mrqa)


@pytest.fixture(autouse=True)
def configured(folders, monkeypatch):
  """The tasks read the hand-made folders with a byte vocabulary; settings restored after."""
  for name in ENV_VARS:
    monkeypatch.delenv(name, raising=False)
  before = registration.settings()
  vocab = seqio.ByteVocabulary()
  registration.configure(vocabulary=vocab, squad_data_dir=folders[0], mrqa_data_dir=folders[1])
  yield vocab
  registration.configure(before.vocabulary, before.superglue_data_dir, before.squad_data_dir,
                         before.mrqa_data_dir)


def _text(value):
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _examples(name, split="validation"):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(split=split, sequence_length=None, shuffle=False)
  return list(ds.as_numpy_iterator())


def test_names_splits_and_mixtures():
  out_of_domain = ["bioasq", "drop", "duorc", "race", "relation_extraction", "textbookqa"]
  in_domain = ["squad", "newsqa", "triviaqa", "searchqa", "hotpotqa", "naturalquestions"]
  assert seqio.get_mixture_or_task("squad_v110").splits == ("train", "validation")
  for name in out_of_domain:
    assert seqio.get_mixture_or_task(f"mrqa_{name}_v100").splits == ("validation",)
    mixture = seqio.get_mixture_or_task(f"squad_to_mrqa_{name}_v100")
    assert sorted(t.name for t in mixture.tasks) == [f"mrqa_{name}_v100", "squad_v110"]
  for name in in_domain:
    assert seqio.get_mixture_or_task(f"mrqa_{name}_v100").splits == ("train", "validation")
  assert sorted(t.name for t in seqio.get_mixture_or_task("squad_to_mrqa_v100").tasks) == sorted(
      ["squad_v110"] + [f"mrqa_{n}_v100" for n in out_of_domain])
  assert labels.get_class_labels("squad_v110") is None  # Generated, not ranked.


def test_mrqa_examples_one_per_question_in_t5_format():
  examples = _examples("mrqa_bioasq_v100")
  assert [_text(e["id"]) for e in examples] == ["q1", "q2", "q3"]
  first, _, third = examples
  # Stripped context and question (as TFDS), punctuation padded (as T5's squad).
  assert _text(first["inputs_pretokenized"]) == (
      "question: Where did the cat sit ? context: The cat sat on the mat . It purred . ")
  assert _text(first["targets_pretokenized"]) == "the mat"
  assert [_text(a) for a in first["answers"]] == ["the mat", "mat"]
  assert _text(third["inputs_pretokenized"]) == (
      "question: Who won Super Bowl 50 ? context: Denver Broncos beat the Carolina "
      "Panthers ( 24 - 10 ) . ")
  assert [_text(a) for a in third["answers"]] == ["Denver Broncos", "Broncos"]
  # Tokenized with the configured vocabulary, EOS appended.
  vocab = seqio.ByteVocabulary()
  assert third["targets"].tolist() == vocab.encode("Denver Broncos") + [1]


def test_mrqa_reader_equals_the_tfds_builder(tmp_path):
  from tensorflow_datasets.text.mrqa import mrqa  # pylint: disable=g-import-not-at-top
  plain = _write_mrqa(tmp_path / "BioASQ.jsonl", BIOASQ, compress=False)
  generate = mrqa.MRQA._generate_examples  # pylint: disable=protected-access
  tfds_examples = [ex for _, ex in generate(None, str(plain), "test")]  # It never uses self.
  ours = list(qa_data.read_mrqa(str(plain)))
  assert ours == [{"id": ex["qid"], "question": ex["question"], "context": ex["context"],
                   "answers": ex["answers"]} for ex in tfds_examples]
  gzipped = _write_mrqa(tmp_path / "BioASQ.jsonl.gz", BIOASQ)
  assert list(qa_data.read_mrqa(str(gzipped))) == ours


def test_squad_reader_equals_the_tfds_builder(folders):
  from tensorflow_datasets.question_answering import qa_utils  # pylint: disable=g-import-not-at-top
  path = f"{folders[0]}/dev-v1.1.json"
  tfds_examples = [ex for _, ex in qa_utils.generate_squadlike_examples(path)]
  ours = list(qa_data.read_squad(path))
  assert ours == [{"id": ex["id"], "question": ex["question"], "context": ex["context"],
                   "answers": ex["answers"]["text"]} for ex in tfds_examples]
  assert ours[0]["answers"] == ["Denver Broncos", "the Denver Broncos", "Broncos"]
  examples = _examples("squad_v110")
  assert [_text(e["inputs_pretokenized"]) for e in examples] == [
      "question: Who won ? context: Super Bowl 50 was won by the Denver Broncos . ",
      "question: Which Super Bowl ? context: Super Bowl 50 was won by the Denver Broncos . "]
  assert [_text(e["targets_pretokenized"]) for e in examples] == ["Denver Broncos",
                                                                   "Super Bowl 50"]


def test_tfds_examples_map_to_the_same_features():
  squad = {"id": "s1", "title": "T", "question": "Q?", "context": "C.",
           "answers": {"text": ["A", "B"], "answer_start": np.array([0, 1], np.int32)}}
  mrqa = {"qid": "s1", "subset": "BioASQ", "question": "Q?", "context": "C.",
          "answers": ["A", "B"]}
  for source, example in ((qa_data.SquadSource(), squad), (qa_data.MrqaSource("drop"), mrqa)):
    to_features = source._from_tfds  # pylint: disable=protected-access
    ds = tf.data.Dataset.from_tensors(example).map(to_features)
    (got,) = list(ds.as_numpy_iterator())
    assert {k: _text(v) if k != "answers" else [_text(a) for a in v]
            for k, v in got.items()} == {"id": "s1", "question": "Q?", "context": "C.",
                                         "answers": ["A", "B"]}


def test_em_and_f1_against_hand_computed_values():
  targets = [["the mat", "mat"], ["Denver Broncos", "Broncos"], ["Carolina Panthers"]]
  predictions = [
      "A mat!",             # 'mat' after normalisation: EM 1, F1 1 (both golds).
      "Broncos of Denver",  # EM 0; F1 max(2PR/(P+R) with P=2/3, R=1 -> 0.8; 0.5) = 0.8.
      "the Panthers team",  # 'panthers team' vs 'carolina panthers': P = R = 1/2, F1 0.5.
  ]
  result = metrics.squad(targets, predictions)
  assert result == pytest.approx({"em": 100 / 3, "f1": 100 * (1 + 0.8 + 0.5) / 3})
  assert metrics.squad([["The  Denver, Broncos."]], ["denver broncos"]) == {"em": 100.0,
                                                                             "f1": 100.0}
  assert metrics.squad([["an apple"]], ["pear"]) == {"em": 0.0, "f1": 0.0}


def test_task_postprocessing_and_metrics_on_the_examples():
  task = seqio.get_mixture_or_task("mrqa_bioasq_v100")
  examples = _examples("mrqa_bioasq_v100")
  targets = [task.postprocess_fn(e["targets_pretokenized"], example=e, is_target=True)
             for e in examples]
  assert targets == [["the mat", "mat"], ["purred"], ["Denver Broncos", "Broncos"]]
  predictions = [task.postprocess_fn(p, example=e, is_target=False)
                 for p, e in zip([b"mat", b"it purred", b"Broncos of Denver"], examples)]
  assert predictions == ["mat", "it purred", "Broncos of Denver"]
  (metric_fn,) = task.metric_fns
  result = metric_fn(targets, predictions)
  # q1 EM 1 F1 1; q2 EM 0, F1 2(1/2)(1)/(3/2) = 2/3; q3 EM 0, F1 0.8.
  assert result == pytest.approx({"em": 100 / 3, "f1": 100 * (1 + 2 / 3 + 0.8) / 3})


def test_unzipped_file_and_train_split():
  (example,) = _examples("mrqa_newsqa_v100", split="train")
  assert _text(example["targets_pretokenized"]) == "Denver Broncos"


def test_missing_and_malformed_files_are_clear_errors(folders):
  with pytest.raises(FileNotFoundError) as e:
    _examples("mrqa_race_v100")
  message = str(e.value)
  assert f"{folders[1]}/dev/RACE.jsonl.gz" in message and "MRQA_DATA_DIR" in message
  assert "https://s3.us-east-2.amazonaws.com/mrqa/release/v2/dev/RACE.jsonl.gz" in message
  with pytest.raises(FileNotFoundError, match=r"dev/NewsQA\.jsonl\.gz not found"):
    _examples("mrqa_newsqa_v100")
  with pytest.raises(FileNotFoundError, match=r"SQuAD file .*train-v1\.1\.json not found"):
    _examples("squad_v110", split="train")
  with pytest.raises(ValueError, match=r"DROP\.jsonl\.gz is not an MRQA file: its first line"):
    _examples("mrqa_drop_v100")
  # Through pt-train / pt-eval's data layer: one line naming the task and the file.
  with pytest.raises(data.DataError, match=r"'mrqa_race_v100'.*RACE\.jsonl\.gz not found"):
    data.get_dataset("mrqa_race_v100", {"inputs": 64, "targets": 8}, "validation", 1)


def test_missing_tfds_data_is_a_clear_error(tmp_path):
  source = qa_data.MrqaSource("bioasq", tfds_data_dir=str(tmp_path / "tfds"))
  assert source.splits == ("validation",)  # TFDS's 'test': the dev file
  with pytest.raises(FileNotFoundError, match=r"tfds build mrqa/bio_asq.*MRQA_DATA_DIR"):
    source.get_dataset("validation")
  squad = qa_data.SquadSource(tfds_data_dir=str(tmp_path / "tfds"))
  with pytest.raises(FileNotFoundError, match=r"tfds build squad/v1\.1.*SQUAD_DATA_DIR"):
    squad.get_dataset("train")


def test_folders_follow_configure(tmp_path, configured):
  registration.configure(vocabulary=configured, mrqa_data_dir=str(tmp_path))
  assert seqio.get_mixture_or_task("mrqa_bioasq_v100").source.data_dir == str(tmp_path)
  # None means the default: the environment variable, else TFDS.
  registration.configure(vocabulary=configured)
  assert seqio.get_mixture_or_task("mrqa_bioasq_v100").source.data_dir is None
  assert seqio.get_mixture_or_task("squad_v110").source.data_dir is None


# ------------------------------------------------------------------ QQP <-> MRPC


def _glue_text(name, tfds_example):
  task = seqio.get_mixture_or_task(name)
  ds = tf.data.Dataset.from_tensors(tfds_example)
  for p in task.preprocessors[:-3]:
    ds = p(ds)
  (e,) = list(ds.as_numpy_iterator())
  return _text(e["inputs"]), _text(e["targets"])


def test_paraphrase_transfer_formats():
  i32, i64 = np.int32(0), np.int64
  mrpc = {"sentence1": "A.", "sentence2": "B.", "label": i64(1), "idx": i32}
  assert _glue_text("glue_mrpc_as_qqp_v002", mrpc) == (
      "qqp question1: A. question2: B.", "duplicate")
  assert _glue_text("taskless_glue_mrpc_as_qqp_v002", dict(mrpc, label=i64(0))) == (
      "question1: A. question2: B.", "not_duplicate")
  qqp = {"question1": "Q1?", "question2": "Q2?", "label": i64(1), "idx": i32}
  assert _glue_text("glue_qqp_as_mrpc_v002", qqp) == (
      "mrpc sentence1: Q1? sentence2: Q2?", "equivalent")
  assert _glue_text("taskless_glue_qqp_as_mrpc_v002", dict(qqp, label=i64(0))) == (
      "sentence1: Q1? sentence2: Q2?", "not_equivalent")


def test_paraphrase_transfer_labels_metrics_and_mixtures():
  for prefix in ("", "taskless_"):
    task = seqio.get_mixture_or_task(f"{prefix}glue_mrpc_as_qqp_v002")
    assert task.splits == ("validation",)
    assert task.source.tfds_dataset.name == "glue/mrpc:2.0.0"
    assert labels.get_class_labels(task.name) == ["not_duplicate", "duplicate"]
    # QQP's words map to MRPC's class ids; MRPC's own words are not legal here.
    assert [task.postprocess_fn(w) for w in (b"duplicate", b"not_duplicate", b"equivalent")] == [
        1, 0, -1]
    # MRPC's metrics: F1 of class 1 and accuracy (targets 1, 1, 0, 0; one wrong, one invalid).
    scores = {}
    for fn in task.metric_fns:
      scores.update(fn([1, 1, 0, 0], [1, 0, 0, -1]))
    assert scores == pytest.approx({"f1": 100 * 2 / 4, "accuracy": 50.0})
    other = seqio.get_mixture_or_task(f"{prefix}glue_qqp_as_mrpc_v002")
    assert other.source.tfds_dataset.name == "glue/qqp:2.0.0"
    assert labels.get_class_labels(other.name) == ["not_equivalent", "equivalent"]
    assert other.postprocess_fn(b"equivalent") == 1
    mixture = seqio.get_mixture_or_task(f"{prefix}glue_qqp_to_mrpc_zeroshot_v002")
    assert sorted(t.name for t in mixture.tasks) == [f"{prefix}glue_mrpc_as_qqp_v002",
                                                     f"{prefix}glue_qqp_v002"]
    # The mixture's tasks agree on QQP's labels, so it is rank-classified too.
    assert labels.get_class_labels(mixture.name) == ["not_duplicate", "duplicate"]
    mixture = seqio.get_mixture_or_task(f"{prefix}glue_mrpc_to_qqp_zeroshot_v002")
    assert sorted(t.name for t in mixture.tasks) == [f"{prefix}glue_mrpc_v002",
                                                     f"{prefix}glue_qqp_as_mrpc_v002"]
  assert glue_transfer.task_name("mrpc", "qqp", True) == "taskless_glue_mrpc_as_qqp_v002"
  assert qa.mrqa_task_name("bioasq") == "mrqa_bioasq_v100"


def test_pt_eval_reads_the_folders_of_its_gin_macros(folders, tmp_path, tiny_checkpoint,
                                                     t5_vocab_path):
  """--gin.SQUAD_DATA_DIR and --gin.MRQA_DATA_DIR (no environment variable):
  pt-eval scores the hand-made files; a folder without them is one error line
  that names the macro."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import helpers  # pylint: disable=g-import-not-at-top
  prompt = tmp_path / "prompt.npy"
  np.save(prompt, np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))
  common = helpers.tiny_ckpt_flags(
      "PROMPT_LENGTH = 3", "BATCH_SIZE = 4", "MIXTURE_OR_TASK_MODULE = 'prompt_tuning.tasks.qa'",
      "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 8}", files=["runs/prompt_eval.gin"]) + [
      f"--gin.CHECKPOINT_PATH='{tiny_checkpoint}'", f"--gin.PROMPT_FILE='{prompt}'",
      f"--gin.seqio.SentencePieceVocabulary.sentencepiece_model_file='{t5_vocab_path}'"]
  for task, macro, folder, examples in (("squad_v110", "SQUAD_DATA_DIR", folders[0], 2),
                                        ("mrqa_bioasq_v100", "MRQA_DATA_DIR", folders[1], 3)):
    out = tmp_path / task
    status, err = helpers.run_cli_in_process("pt-eval", common + [
        f"--gin.MIXTURE_OR_TASK_NAME='{task}'", f"--gin.{macro}='{folder}'",
        f"--gin.EVAL_OUTPUT_DIR='{out}'"])
    assert status == 0, err[-3000:]
    metrics = json.loads((out / f"{task}-metrics.jsonl").read_text().splitlines()[-1])
    assert set(metrics) >= {"em", "f1"} and 0 <= metrics["f1"] <= 100, metrics
    inferred = (out / f"{task}-000000.jsonl").read_text().splitlines()
    assert len(inferred) == examples
    # The same run with an empty folder: nothing written, one line naming the macro.
    empty = tmp_path / f"empty_{macro}"
    empty.mkdir()
    status, err = helpers.run_cli_in_process("pt-eval", common + [
        f"--gin.MIXTURE_OR_TASK_NAME='{task}'", f"--gin.{macro}='{empty}'",
        f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'not_written'}'"])
    lines = [l for l in err.splitlines() if l.startswith("pt-eval: error:")]
    assert status == 1 and "Traceback" not in err and len(lines) == 1, err[-3000:]
    assert f"--gin.{macro}" in lines[0] and str(empty) in lines[0], lines[0]
    assert not (tmp_path / "not_written").exists()


def test_train_stream_position_is_saved_and_restored(tmp_path, configured):
  """The official files are read into memory, so pt-train's data state (the
  tf.data iterator's checkpoint) covers the QA tasks: a restored iterator
  continues the shuffled, repeated stream where it stopped, replaying nothing."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from prompt_tuning.training import data_state  # pylint: disable=g-import-not-at-top
  (tmp_path / "train-v1.1.json").write_text(json.dumps(SQUAD_DEV))
  registration.configure(vocabulary=configured, squad_data_dir=str(tmp_path))

  def stream():
    return data_state.TrainIterator(data.get_dataset(
        "squad_v110", {"inputs": 64, "targets": 16}, "train", 1, shuffle=True, seed=3))
  first = stream()
  for _ in range(3):
    next(first)
  files = first.state_files("train_ds")
  assert files, "the QA train pipeline could not be checkpointed"
  want = [next(first) for _ in range(5)]
  second = stream()
  assert second.restore("train_ds", files) is None
  for expected, batch in zip(want, (next(second) for _ in range(5))):
    for name, value in expected.items():
      np.testing.assert_array_equal(batch[name], value, err_msg=name)
