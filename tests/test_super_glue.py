"""SuperGLUE / GLUE tasks on the real FewGLUE text (tasks/super_glue.py, glue.py).

The official-release layout is built in a tmp dir from ../shared/data/fewglue
(train.jsonl; val.jsonl is the same file; test.jsonl is the same rows with the
labels removed; AX-b / AX-g are made from the RTE rows) and read through the
JSONL source. Expected texts are written here from T5's formats, independently
of tasks/preprocessors.py.
"""
import functools
import importlib
import json
import os
import re
import tempfile

import numpy as np
import pytest

from conftest import shared_path

tf = pytest.importorskip("tensorflow")
seqio = pytest.importorskip("seqio")
tfds = pytest.importorskip("tensorflow_datasets")

FOLDERS = {"boolq": "BoolQ", "cb": "CB", "copa": "COPA", "multirc": "MultiRC",
           "record": "ReCoRD", "rte": "RTE", "wic": "WiC", "wsc": "WSC"}
CONFIGS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "axb",
           "axg")
ALL_TASKS = [f"{p}super_glue_{c}_v102" for p in ("", "taskless_")
             for c in CONFIGS] + [
                 f"{p}super_glue_wsc_v102_simple_{s}"
                 for p in ("", "taskless_") for s in ("train", "eval")]


def _rows(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _write(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def _unlabelled(folder, row):
  row = json.loads(json.dumps(row))
  if folder == "MultiRC":
    for q in row["passage"]["questions"]:
      for a in q["answers"]:
        a.pop("label")
  elif folder == "ReCoRD":
    for qa in row["qas"]:
      qa.pop("answers")
  else:
    row.pop("label")
  return row


@pytest.fixture(scope="module")
def fewglue():
  return {folder: _rows(shared_path("fewglue", folder, "train.jsonl"))
          for folder in FOLDERS.values()}


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory, fewglue):
  """An official-release layout made of the FewGLUE files."""
  root = tmp_path_factory.mktemp("superglue")
  for folder, rows in fewglue.items():
    os.makedirs(root / folder)
    os.symlink(shared_path("fewglue", folder, "train.jsonl"),
               root / folder / "train.jsonl")
    val = rows
    if folder == "WSC":  # Every third candidate marked wrong, to test WSC.
      val = [dict(r, label=(i % 3 != 0)) for i, r in enumerate(rows)]
    _write(root / folder / "val.jsonl", val)
    _write(root / folder / "test.jsonl", [_unlabelled(folder, r) for r in rows])
  rte = fewglue["RTE"]
  _write(root / "AX-b" / "AX-b.jsonl", [
      {"sentence1": r["premise"], "sentence2": r["hypothesis"],
       "idx": i, "label": r["label"], "logic": "Negation"}
      for i, r in enumerate(rte)])
  _write(root / "AX-g" / "AX-g.jsonl", [
      {"premise": r["premise"], "hypothesis": r["hypothesis"], "idx": i,
       "label": r["label"], "pair_id": 1000 + i // 2}
      for i, r in enumerate(rte)])
  return str(root)


@pytest.fixture(scope="module")
def vocab():
  """T5's vocabulary from the local copy of its SentencePiece model."""
  return seqio.SentencePieceVocabulary(
      str(shared_path("t5_vocab", "spiece.model")), extra_ids=100)


@pytest.fixture(scope="module")
def sg(release_dir, vocab):
  """The super_glue module, configured to read the tmp release with `vocab`."""
  from prompt_tuning.tasks import registration
  module = importlib.import_module("prompt_tuning.tasks.super_glue")
  before = registration.settings()
  registration.configure(vocabulary=vocab, superglue_data_dir=release_dir)
  yield module
  registration.configure(before.vocabulary, before.superglue_data_dir)


@pytest.fixture(scope="module")
def examples(sg):
  """examples(task, split) -> list of numpy dicts (memoised)."""
  del sg

  @functools.lru_cache(maxsize=None)
  def get(name, split):
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(split=split, sequence_length=None, shuffle=False)
    return list(ds.as_numpy_iterator())

  return get


def _text(value):
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _pairs(exs):
  return [(_text(e["inputs_pretokenized"]), _text(e["targets_pretokenized"]))
          for e in exs]


def _default_split(name):
  if "axb" in name or "axg" in name:
    return "test"
  return "validation" if name.endswith("_eval") else "train"


# ---------------------------------------------------------------- expected --
# T5's formats written out from the JSON rows, independently of the package.


def _expected_wsc_target(row):
  target = row["target"]
  text = target["span1_text"]
  if text not in row["text"]:  # wsc.fixed: match the case of the text.
    word = row["text"].split()[target["span1_index"]]
    text = (text[0].lower() if word[0].islower() else text[0].upper()) + text[1:]
    text = text.rstrip(".")
  return text


def _expected_wsc_input(row):
  words = row["text"].split(" ")
  index = row["target"]["span2_index"]
  words[index] = "*" + row["target"]["span2_text"] + "*"
  return "wsc: " + " ".join(words)


def _expected(config, rows):
  """[(inputs, targets)] of the non-taskless task for the FewGLUE rows."""
  out = []
  for r in rows:
    if config == "boolq":
      out.append((f"boolq passage: {r['passage']} question: {r['question']}",
                  str(r["label"])))
    elif config == "cb":
      out.append((f"cb hypothesis: {r['hypothesis']} premise: {r['premise']}",
                  r["label"]))
    elif config == "copa":
      out.append((f"copa choice1: {r['choice1']} choice2: {r['choice2']} "
                  f"premise: {r['premise']} question: {r['question']}",
                  ["choice1", "choice2"][r["label"]]))
    elif config == "rte":
      out.append((f"rte hypothesis: {r['hypothesis']} premise: {r['premise']}",
                  r["label"]))
    elif config == "wic":
      out.append((f"wic sentence1: {r['sentence1']} sentence2: "
                  f"{r['sentence2']} word: {r['word']}", str(r["label"])))
    elif config == "multirc":
      text = r["passage"]["text"]
      for q in r["passage"]["questions"]:
        for a in q["answers"]:
          out.append((f"multirc question: {q['question']} answer: "
                      f"{a['text']} paragraph: {text}", str(bool(a["label"]))))
    elif config == "record":
      text = r["passage"]["text"]
      entities = sorted({text[e["start"]:e["end"] + 1]
                         for e in r["passage"]["entities"]})
      passage = re.sub(r"([.?!\"'])\n@highlight\n", r"\1 ", text)
      passage = passage.replace("\n@highlight\n", ". ")
      for qa in r["qas"]:
        inputs = (f"record query: {qa['query']} entities: "
                  f"{', '.join(entities)} passage: {passage}")
        for answer in sorted({a["text"] for a in qa["answers"]}):
          out.append((inputs, answer))
  return out


# ------------------------------------------------------------ registration --


def test_all_tasks_and_mixtures_are_registered(sg):
  names = set(seqio.TaskRegistry.names())
  assert set(ALL_TASKS) <= names
  for mixture in ("super_glue_v102", "taskless_super_glue_v102"):
    assert mixture in seqio.MixtureRegistry.names()
  rte = seqio.get_mixture_or_task("super_glue_rte_v102")
  importlib.reload(sg)  # Registering twice is harmless.
  assert set(ALL_TASKS) <= set(seqio.TaskRegistry.names())
  assert seqio.get_mixture_or_task("super_glue_rte_v102") is rte


def test_mixture_rates_are_train_sizes(sg):
  for prefix in ("", "taskless_"):
    mixture = seqio.get_mixture_or_task(f"{prefix}super_glue_v102")
    rates = {t.name[len(prefix):]: mixture.get_rate(t) for t in mixture.tasks}
    assert rates == {
        "super_glue_boolq_v102": 9427, "super_glue_cb_v102": 250,
        "super_glue_copa_v102": 400, "super_glue_multirc_v102": 27243,
        "super_glue_record_v102": 138854, "super_glue_rte_v102": 2490,
        "super_glue_wic_v102": 5428, "super_glue_wsc_v102_simple_train": 259,
        "super_glue_wsc_v102_simple_eval": 0}


def test_mixture_gives_examples_of_its_tasks(sg, examples):
  mixture = seqio.get_mixture_or_task("taskless_super_glue_v102")
  ds = mixture.get_dataset(sequence_length=None, split="train", shuffle=False,
                           copy_pretokenized=True)
  got = _pairs(ds.take(50).as_numpy_iterator())
  known = {pair for task in mixture.tasks if "train" in task.splits
           for pair in _pairs(examples(task.name, "train"))}
  assert len(got) == 50 and set(got) <= known


def test_class_labels(sg):
  from prompt_tuning.tasks import labels
  assert labels.get_class_labels("super_glue_rte_v102") == [
      "entailment", "not_entailment"]
  assert labels.get_class_labels("taskless_super_glue_cb_v102") == [
      "entailment", "contradiction", "neutral"]
  for config in ("boolq", "wic", "multirc"):
    assert labels.get_class_labels(f"super_glue_{config}_v102") == [
        "False", "True"]
  assert labels.get_class_labels("super_glue_copa_v102") == [
      "choice1", "choice2"]
  assert labels.get_class_labels("super_glue_axb_v102") == [
      "entailment", "not_entailment"]
  assert labels.get_class_labels("super_glue_record_v102") is None
  assert labels.get_class_labels("super_glue_wsc_v102_simple_eval") is None
  assert labels.get_class_labels("super_glue_v102") is None  # Mixed labels.
  assert labels.get_class_labels("no_such_task") is None
  labels.register_class_labels("_test_a", ["x", "y"])
  labels.register_class_labels("_test_b", ["x", "y"])
  seqio.MixtureRegistry.add("_test_mix_labels", [
      ("super_glue_boolq_v102", 1.0), ("super_glue_wic_v102", 1.0)])
  try:
    assert labels.get_class_labels("_test_mix_labels") == ["False", "True"]
  finally:
    seqio.MixtureRegistry.remove("_test_mix_labels")
  with pytest.raises(ValueError):
    labels.register_class_labels("_test_a", ["y", "x"])


# ---------------------------------------------------------------- formats --


@pytest.mark.parametrize("config",
                         ["boolq", "cb", "copa", "multirc", "record", "rte",
                          "wic"])
def test_format_on_fewglue(config, examples, fewglue):
  expected = _expected(config, fewglue[FOLDERS[config]])
  got = _pairs(examples(f"super_glue_{config}_v102", "train"))
  assert got == expected


def test_spot_checks_written_by_hand(examples):
  """A few examples written out in full from T5's format."""
  copa = _pairs(examples("super_glue_copa_v102", "train"))[0]
  assert copa == (
      "copa choice1: The chandelier dropped from the ceiling. choice2: The "
      "chandelier's lights flickered on and off. premise: The chandelier "
      "shattered on the floor. question: cause", "choice1")
  wic = _pairs(examples("super_glue_wic_v102", "train"))[0]
  assert wic == ("wic sentence1: You make me feel naked. sentence2: She felt "
                 "small and insignificant. word: feel", "True")
  rte_inputs, rte_target = _pairs(examples("super_glue_rte_v102", "train"))[0]
  assert rte_inputs.startswith(
      "rte hypothesis: JFK airport is in New York. premise: Even the most "
      "draconian proposal \u2014 to reinstate flight limits")
  assert rte_target == "not_entailment"
  assert _pairs(examples("taskless_super_glue_rte_v102", "train"))[0][0] == (
      rte_inputs[len("rte "):])
  cb = _pairs(examples("super_glue_cb_v102", "train"))[1]
  assert cb == (
      "cb hypothesis: Emma would have been all congratulations and the joys "
      "of womanhood premise: ``That's good.'' Ruth stood looking at her. "
      "Rachaela could imagine Emma would have been all congratulations and "
      "the joys of womanhood.", "entailment")
  record = _pairs(examples("super_glue_record_v102", "train"))
  inputs, target = record[0]
  assert inputs.startswith(
      "record query: Speaking after the game, Mourinho said: 'The important "
      "thing is to give competition to the players, the best thing was that "
      "@placeholder made it difficult. entities: Blues, Branislav Ivanovic, ")
  assert (" passage: By Hamish Mackay Goals from Diego Costa" in inputs and
          "Fernando Torres horror miss. Chelsea come from behind to beat "
          "Olimpija Ljubljana 2-1 in Slovenia. Didier Drogba joined" in inputs)
  assert "@highlight" not in inputs and target == "Olimpija Ljubljana"
  multirc = _pairs(examples("super_glue_multirc_v102", "train"))[1]
  assert multirc[0].startswith(
      "multirc question: How does Jason react to the stranger who arrives "
      "with Susan? answer: He objects to the stranger's presence and "
      "challenges him to a shootout paragraph: A stranger in town meets")
  assert multirc[1] == "True"


def test_wsc_simple_on_fewglue(examples, fewglue):
  rows = fewglue["WSC"]
  train = examples("super_glue_wsc_v102_simple_train", "train")
  pairs = _pairs(train)
  assert len(pairs) == len(rows)  # FewGLUE WSC has only positive examples.
  by_idx = {int(e["idx"]): p for e, p in zip(train, pairs)}
  assert by_idx[16] == (
      "wsc: The city councilmen refused the demonstrators a permit because "
      "*they* advocated violence.", "the demonstrators")
  # T5 masks this one by hand: the word at span2_index is 'him,"'.
  assert by_idx[137] == (
      "wsc: The boy continued to whip the pony , and eventually the pony threw "
      "him over. John laughed out quite loud. \"Good for *him* ,\" he said.",
      "pony")
  for row in rows:
    if row["idx"] != 137:
      assert by_idx[row["idx"]] == (_expected_wsc_input(row),
                                    _expected_wsc_target(row))
  # Evaluation keeps the negative candidates, with their label.
  val = examples("super_glue_wsc_v102_simple_eval", "validation")
  assert [int(e["label"]) for e in val] == [int(i % 3 != 0)
                                           for i in range(len(rows))]
  assert _pairs(val) == [by_idx[r["idx"]] for r in rows]
  assert {int(e["label"]) for e in examples(
      "super_glue_wsc_v102_simple_train", "train")} == {1}


def test_diagnostics_are_written_as_rte(examples, fewglue):
  rte = _expected("rte", fewglue["RTE"])
  assert _pairs(examples("super_glue_axb_v102", "test")) == rte
  assert _pairs(examples("super_glue_axg_v102", "test")) == rte
  assert [int(e["idx"]) for e in examples("super_glue_axg_v102", "test")] == (
      list(range(len(rte))))


@pytest.mark.parametrize("name", [n for n in ALL_TASKS
                                  if not n.startswith("taskless_")])
def test_taskless_is_full_minus_first_word(name, examples):
  split = _default_split(name)
  full = _pairs(examples(name, split))
  taskless = _pairs(examples("taskless_" + name, split))
  assert len(full) == len(taskless) > 0
  for (f_in, f_tgt), (t_in, t_tgt) in zip(full, taskless):
    first, rest = f_in.split(" ", 1)
    assert first in CONFIGS + ("wsc:",) or first == "rte"
    assert t_in == rest and t_tgt == f_tgt


def test_unlabelled_test_split(examples, fewglue):
  for config in ("boolq", "cb", "copa", "rte", "wic", "multirc"):
    exs = _pairs(examples(f"super_glue_{config}_v102", "test"))
    assert exs == [(i, "<unk>") for i, _ in exs] and exs
  record = examples("super_glue_record_v102", "test")
  queries = sum(len(r["qas"]) for r in fewglue["ReCoRD"])
  assert len(record) == queries
  assert {_text(e["targets_pretokenized"]) for e in record} == {"<unk>"}
  assert all(len(e["answers"]) == 0 for e in record)


def test_record_keeps_all_answers_on_every_copy(examples, fewglue):
  exs = examples("super_glue_record_v102", "validation")
  for row in fewglue["ReCoRD"]:
    for qa in row["qas"]:
      answers = sorted({a["text"] for a in qa["answers"]})
      copies = [e for e in exs if int(e["idx/query"]) == qa["idx"]]
      assert [_text(e["targets_pretokenized"]) for e in copies] == answers
      for e in copies:
        assert [_text(a) for a in e["answers"]] == answers
        assert int(e["idx/passage"]) == row["idx"]


def test_vocabulary_round_trip(examples, vocab):
  task = seqio.get_mixture_or_task("taskless_super_glue_rte_v102")
  assert task.output_features["inputs"].vocabulary is vocab  # The configured one.
  assert task.output_features["targets"].vocabulary is vocab
  assert vocab.vocab_size == 32100  # 32,000 pieces + 100 sentinels.
  e = examples("taskless_super_glue_rte_v102", "train")[0]
  assert e["inputs"][-1] == 1 and e["targets"][-1] == 1  # EOS.
  assert vocab.decode(e["targets"][:-1].tolist()) == "not_entailment"
  assert vocab.decode(e["inputs"][:-1].tolist()).startswith(
      "hypothesis: JFK airport is in New York. premise:")


# ----------------------------------------------------------------- sources --


def _py(value):
  """Nested numpy / bytes -> plain python, for comparisons."""
  if isinstance(value, dict):
    return {k: _py(v) for k, v in value.items()}
  value = np.asarray(value)
  if value.ndim:
    return [_py(v) for v in value]
  value = value.item()
  return value.decode("utf-8") if isinstance(value, bytes) else value


@pytest.mark.parametrize("config,split", [
    (c, s) for c in CONFIGS + ("wsc", "wsc.fixed") for s in ("train", "test")
    if s == "test" or c not in ("axb", "axg")])
def test_jsonl_source_equals_tfds_builder(config, split, sg, release_dir, monkeypatch,
                                          tmp_path):
  """Same element_spec and same examples as the TFDS super_glue builder."""
  from prompt_tuning.tasks import sources
  from prompt_tuning.tasks import superglue_jsonl
  # TFDS makes (and never removes) a temporary folder for an unprepared
  # builder's metadata: in this test's folder, not in /tmp.
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  builder = tfds.builder(f"super_glue/{config}:1.0.2",
                         data_dir=os.path.join(release_dir, "no_tfds"))
  if not hasattr(builder, "_generate_examples"):
    pytest.skip("this TFDS version has no _generate_examples")
  source = sources.SuperGlueSource(config, data_dir=release_dir)
  ds = source.get_dataset(split=split, shuffle=False)
  assert ds.element_spec == builder.info.features.get_tensor_spec()
  path = superglue_jsonl.split_path(release_dir, config, split)
  theirs = [_py(builder.info.features.encode_example(ex)) for _, ex in
            # pylint: disable-next=protected-access
            builder._generate_examples(data_file=path, split=split)]
  ours = [_py(ex) for ex in ds.as_numpy_iterator()]
  assert ours == theirs and ours


def test_hand_built_tfds_example_gives_same_output(sg, examples, fewglue):
  """A TFDS-layout dict built by hand goes through the same preprocessors."""

  def run(name, tfds_example):
    task = seqio.get_mixture_or_task(name)
    ds = tf.data.Dataset.from_tensors(tfds_example)
    for p in task.preprocessors[:-3]:  # Text preprocessors only.
      ds = p(ds)
    return [(_text(e["inputs"]), _text(e["targets"]))
            for e in ds.as_numpy_iterator()]

  r = fewglue["RTE"][0]
  got = run("taskless_super_glue_rte_v102", {
      "premise": r["premise"], "hypothesis": r["hypothesis"],
      "idx": np.int32(r["idx"]), "label": np.int64(1)})
  assert got == _pairs(examples("taskless_super_glue_rte_v102", "train"))[:1]
  r = fewglue["WSC"][1]
  got = run("super_glue_wsc_v102_simple_train", {
      "text": r["text"], "span1_index": np.int32(4), "span2_index": np.int32(9),
      "span1_text": "the demonstrators", "span2_text": "they",
      "idx": np.int32(16), "label": np.int64(1)})
  assert got == _pairs(examples("super_glue_wsc_v102_simple_train",
                                "train"))[1:2]
  r = fewglue["ReCoRD"][0]
  text = r["passage"]["text"]
  qa = r["qas"][0]
  got = run("super_glue_record_v102", {
      "passage": text, "query": qa["query"],
      "entities": sorted({text[e["start"]:e["end"] + 1]
                          for e in r["passage"]["entities"]}),
      "answers": sorted({a["text"] for a in qa["answers"]}),
      "idx": {"passage": np.int32(r["idx"]), "query": np.int32(qa["idx"])}})
  n = len(got)
  assert got == _pairs(examples("super_glue_record_v102", "train"))[:n]
  # MultiRC markup is removed, the label is 'True'/'False'.
  got = run("super_glue_multirc_v102", {
      "paragraph": "Sent 1: <b>Bold</b> text.<br>Sent 2: more.",
      "question": "Q?", "answer": "A.", "label": np.int64(0),
      "idx": {"paragraph": np.int32(0), "question": np.int32(1),
              "answer": np.int32(2)}})
  assert got == [("multirc question: Q? answer: A. paragraph: Sent 1: Bold "
                  "text. Sent 2: more.", "False")]


def test_env_var_selects_jsonl(sg, release_dir, vocab, monkeypatch):
  """$SUPERGLUE_DATA_DIR is the default when none is configured."""
  from prompt_tuning.tasks import registration
  from prompt_tuning.tasks import sources
  monkeypatch.setenv("SUPERGLUE_DATA_DIR", release_dir)
  try:
    assert sources.default_superglue_data_dir() == release_dir
    registration.configure(vocabulary=vocab)  # No folder given: the default.
    task = seqio.get_mixture_or_task("super_glue_cb_v102")
    assert task.source.data_dir == release_dir
    ds = task.source.get_dataset("validation", shuffle=False)
    assert len(list(ds)) == 32
    # A bare source reads only the folder it is given: TFDS without one.
    assert sources.SuperGlueSource("cb").data_dir is None
  finally:
    registration.configure(vocabulary=vocab, superglue_data_dir=release_dir)


def test_missing_file_error_names_file_and_fix(sg, release_dir, vocab,
                                              tmp_path):
  from prompt_tuning.tasks import registration
  from prompt_tuning.tasks import sources
  registration.configure(vocabulary=vocab, superglue_data_dir=tmp_path)
  try:
    with pytest.raises(FileNotFoundError) as err:
      seqio.get_mixture_or_task("super_glue_rte_v102").get_dataset(
          split="validation", sequence_length=None, shuffle=False)
    message = str(err.value)
    assert str(tmp_path / "RTE" / "val.jsonl") in message
    assert "SUPERGLUE_DATA_DIR" in message and "tfds build" in message
    assert "super_glue/rte:1.0.2" in message
    with pytest.raises(ValueError):
      sources.SuperGlueSource("axb").get_dataset("train")
  finally:
    registration.configure(vocabulary=vocab, superglue_data_dir=release_dir)
  # No data dir: TFDS, which is not prepared in an empty TFDS data dir.
  source = sources.SuperGlueSource("boolq", tfds_data_dir=str(tmp_path / "tfds"))
  with pytest.raises(FileNotFoundError) as err:
    source.get_dataset("train")
  message = str(err.value)
  assert "super_glue/boolq:1.0.2" in message and "tfds build" in message
  assert "SUPERGLUE_DATA_DIR" in message
  assert not (tmp_path / "tfds").exists()  # Nothing downloaded or created.


# ------------------------------------------------------ postprocess + eval --


@pytest.mark.parametrize("name", [n for n in ALL_TASKS
                                  if not n.endswith("_simple_train")])
def test_gold_predictions_score_100(name, examples):
  """Targets fed back as predictions through postprocess_fn and metric_fns."""
  task = seqio.get_mixture_or_task(name)
  split = _default_split(name)
  exs = examples(name, split)
  targets = [task.postprocess_fn(_text(e["targets_pretokenized"]), example=e,
                                 is_target=True) for e in exs]
  predictions = [task.postprocess_fn(_text(e["targets_pretokenized"]),
                                     example=e, is_target=False) for e in exs]
  if "wsc" in name:  # Generating the candidate means 'is the referent'.
    predictions = [1] * len(exs)
    targets = [1] * len(exs)
  for metric_fn in task.metric_fns:
    for key, value in metric_fn(targets, predictions).items():
      if key == "gender_parity":  # Our fake AX-g pairs differ in gold label.
        gold = [t["value"] for t in targets]
        value_expected = 100 * np.mean(
            [gold[i] == gold[i + 1] for i in range(0, len(gold), 2)])
        assert value == pytest.approx(value_expected)
      else:
        assert value == pytest.approx(100.0), (name, key)


def test_wsc_eval_postprocess_and_metric(examples):
  task = seqio.get_mixture_or_task("taskless_super_glue_wsc_v102_simple_eval")
  exs = examples(task.name, "validation")
  targets = [task.postprocess_fn("", example=e, is_target=True) for e in exs]
  # The model always generates the candidate: right only for the positives.
  predictions = [task.postprocess_fn(
      "The " + _text(e["targets_pretokenized"]).upper(), example=e,
      is_target=False) for e in exs]
  assert predictions == [1] * len(exs)
  (metric_fn,) = task.metric_fns
  expected = 100 * np.mean(targets)
  assert metric_fn(targets, predictions)["accuracy"] == pytest.approx(expected)


def test_illegal_predictions_count_as_wrong(examples):
  task = seqio.get_mixture_or_task("super_glue_cb_v102")
  exs = examples(task.name, "train")
  targets = [task.postprocess_fn(_text(e["targets_pretokenized"]), example=e,
                                 is_target=True) for e in exs]
  predictions = [task.postprocess_fn("maybe", example=e, is_target=False)
                 for e in exs]
  assert set(predictions) == {-1}
  (metric_fn,) = task.metric_fns
  assert metric_fn(targets, predictions) == {"mean_3class_f1": 0.0,
                                             "accuracy": 0.0}


# -------------------------------------------------------------------- GLUE --


@pytest.fixture(scope="module")
def glue(sg):
  return importlib.import_module("prompt_tuning.tasks.glue")


def _glue_text(name, tfds_example):
  task = seqio.get_mixture_or_task(name)
  ds = tf.data.Dataset.from_tensors(tfds_example)
  for p in task.preprocessors[:-3]:
    ds = p(ds)
  (e,) = list(ds.as_numpy_iterator())
  return _text(e["inputs"]), _text(e["targets"])


def test_glue_tasks_registered(glue):
  from prompt_tuning.tasks import labels
  for config in ("sst2", "mrpc", "qqp", "rte", "mnli", "qnli", "cola",
                 "stsb"):
    for prefix in ("", "taskless_"):
      assert f"{prefix}glue_{config}_v002" in seqio.TaskRegistry.names()
  assert labels.get_class_labels("taskless_glue_sst2_v002") == [
      "negative", "positive"]
  assert labels.get_class_labels("glue_mrpc_v002") == [
      "not_equivalent", "equivalent"]
  assert labels.get_class_labels("glue_stsb_v002") is None
  assert "validation_matched" in seqio.get_mixture_or_task(
      "glue_mnli_v002").splits


def test_glue_formats(glue):
  """T5 paper (Appendix D) formats on TFDS glue-layout examples."""
  i32, i64 = np.int32(0), np.int64
  assert _glue_text("glue_sst2_v002", {
      "sentence": "it confirms fincher 's status as a film maker .",
      "label": i64(1), "idx": i32}) == (
          "sst2 sentence: it confirms fincher 's status as a film maker .",
          "positive")
  assert _glue_text("taskless_glue_sst2_v002", {
      "sentence": "a gloriously goofy way .", "label": i64(0),
      "idx": i32}) == ("sentence: a gloriously goofy way .", "negative")
  assert _glue_text("glue_rte_v002", {
      "sentence1": "The premise.", "sentence2": "The hypothesis.",
      "label": i64(0), "idx": i32}) == (
          "rte sentence1: The premise. sentence2: The hypothesis.",
          "entailment")
  assert _glue_text("glue_mnli_v002", {
      "premise": "P.", "hypothesis": "H.", "label": i64(1), "idx": i32}) == (
          "mnli hypothesis: H. premise: P.", "neutral")
  assert _glue_text("glue_mnli_mismatched_v002", {
      "premise": "P.", "hypothesis": "H.", "label": i64(-1), "idx": i32}) == (
          "mnli hypothesis: H. premise: P.", "<unk>")
  assert _glue_text("glue_qqp_v002", {
      "question1": "Q1?", "question2": "Q2?", "label": i64(1),
      "idx": i32}) == ("qqp question1: Q1? question2: Q2?", "duplicate")
  assert _glue_text("glue_qnli_v002", {
      "question": "Q?", "sentence": "S.", "label": i64(1), "idx": i32}) == (
          "qnli question: Q? sentence: S.", "not_entailment")
  assert _glue_text("glue_mrpc_v002", {
      "sentence1": "A.", "sentence2": "B.", "label": i64(1), "idx": i32}) == (
          "mrpc sentence1: A. sentence2: B.", "equivalent")
  assert _glue_text("taskless_glue_cola_v002", {
      "sentence": "Him ate.", "label": i64(0), "idx": i32}) == (
          "sentence: Him ate.", "unacceptable")
  # tf.round rounds halves to even: 3.25 * 5 = 16.25 -> 16, 4.9 * 5 = 24.5
  # -> 24 (as T5).
  for score, target in ((3.25, "3.2"), (3.35, "3.4"), (0.0, "0.0"),
                        (4.9, "4.8"), (4.95, "5.0"), (1.83, "1.8")):
    assert _glue_text("glue_stsb_v002", {
        "sentence1": "A.", "sentence2": "B.", "label": np.float32(score),
        "idx": i32}) == ("stsb sentence1: A. sentence2: B.", target)


def test_glue_missing_tfds_error(glue, tmp_path):
  from prompt_tuning.tasks import sources
  source = sources.PreparedTfdsSource("glue/sst2:2.0.0",
                                      splits=("train", "validation"),
                                      tfds_data_dir=str(tmp_path / "tfds"))
  with pytest.raises(FileNotFoundError, match=r"tfds build glue"):
    source.get_dataset("validation")
  assert source.num_input_examples("validation") is None
