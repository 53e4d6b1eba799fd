"""pt-neighbors on the real tiny T5X checkpoint and T5's vocabulary: the
neighbours are a plain cosine top-k over the vocabulary's own pieces, for one
prompt and for SMoP's k prompts; the output files; label matches; and one
clear error line for each kind of bad input, with nothing written."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import shared_path  # pylint: disable=g-bad-import-order
from prompt_tuning.evaluation import neighbors
from prompt_tuning.storage import t5x_checkpoints

PROG = "pt-neighbors"


@pytest.fixture(scope="module")
def table():
  """The tiny checkpoint's embedding table [32128, 4] (float32)."""
  path = shared_path("t5x_tiny", "checkpoint_3")
  params = t5x_checkpoints.load_params(path, [neighbors.EMBEDDING_NAME], dtype=np.float32)
  return np.asarray(params["token_embedder"]["embedding"])


@pytest.fixture(scope="module")
def processor():
  return neighbors.load_vocabulary(str(shared_path("t5_vocab", "spiece.model")))


def _reference(prompt_rows, table, top_k):
  """Plain numpy, float64: cosine similarity to the first 32000 rows, top-k."""
  rows = table[:32000].astype(np.float64)
  p = prompt_rows.astype(np.float64)
  cos = (p @ rows.T) / np.outer(np.linalg.norm(p, axis=1), np.linalg.norm(rows, axis=1))
  ids = np.argsort(-cos, axis=1, kind="stable")[:, :top_k]
  return ids, np.take_along_axis(cos, ids, axis=1)


def _check_against_reference(records, prompt_rows, table, processor, top_k):
  ref_ids, ref_sims = _reference(prompt_rows, table, top_k)
  assert len(records) == len(prompt_rows)
  for record, want_ids, want_sims in zip(records, ref_ids, ref_sims):
    assert record["ids"] == want_ids.tolist()
    np.testing.assert_allclose(record["similarities"], want_sims, atol=2e-6)
    assert record["pieces"] == [processor.id_to_piece(int(i)) for i in want_ids]


def test_one_prompt_is_a_cosine_top_k(table, processor):
  prompt = np.random.RandomState(0).uniform(-0.5, 0.5, (7, 4)).astype(np.float32)
  records = neighbors.compute(prompt, table, processor, top_k=5)
  assert [r["position"] for r in records] == list(range(7))
  assert all("prompt" not in r and "label_match" not in r for r in records)
  _check_against_reference(records, prompt, table, processor, 5)


def test_smop_prompts_are_a_cosine_top_k_each(table, processor):
  prompts = np.random.RandomState(1).normal(size=(3, 4, 4)).astype(np.float32)
  records = neighbors.compute(prompts, table, processor, top_k=3)
  assert [(r["prompt"], r["position"]) for r in records] == [
      (j, i) for j in range(3) for i in range(4)]
  _check_against_reference(records, prompts.reshape(12, 4), table, processor, 3)


def test_only_the_vocabularys_own_pieces_are_candidates(table, processor):
  # Rows 32000.. are sentinels and padding: a prompt equal to one of them still
  # only gets real pieces (and its own id is not among them).
  prompt = table[[32000, 32099, 32127]]
  records = neighbors.compute(prompt, table, processor, top_k=50)
  assert all(max(r["ids"]) < 32000 for r in records)
  # A prompt equal to a real piece's row has that piece first, similarity 1.
  (record,) = neighbors.compute(table[[1234]], table, processor, top_k=2)
  assert record["ids"][0] == 1234 and record["similarities"][0] == pytest.approx(1.0, abs=1e-6)


def test_label_matches_on_a_prompt_holding_label_embeddings(table, processor, tmp_path):
  equivalent = processor.piece_to_id("\u2581equivalent")  # one piece: the whole label
  not_ = processor.piece_to_id("\u2581not")  # first piece of 'not_equivalent'
  assert processor.encode_as_pieces("equivalent") == ["\u2581equivalent"]
  rng = np.random.RandomState(2)
  prompt = rng.uniform(-0.5, 0.5, (5, 4)).astype(np.float32)
  prompt[1] = table[equivalent] * 3.0  # cosine ignores the scale
  prompt[3] = table[not_]
  path = tmp_path / "prompt.npy"
  np.save(path, prompt)
  out = tmp_path / "out"
  text = neighbors.run(checkpoint=str(_tiny()), prompt=str(path), top_k=3,
                       output_dir=str(out), vocabulary=str(_vocab()),
                       class_labels=["not_equivalent", "equivalent"])
  records = [json.loads(l) for l in (out / "neighbors.jsonl").read_text().splitlines()]
  matches = {r["position"]: r["label_match"] for r in records if r["label_match"]}
  # Other positions may match by chance only if a neighbour is 'not' or 'equivalent'.
  for position, labels in matches.items():
    pieces = {p.replace("\u2581", "").lower() for p in records[position]["pieces"]}
    assert set(labels) == {l for l, k in (("not_equivalent", "not"),
                                          ("equivalent", "equivalent")) if k in pieces}
  assert matches[1] == ["equivalent"] and records[1]["ids"][0] == equivalent
  assert matches[3] == ["not_equivalent"] and records[3]["ids"][0] == not_
  summary = [l for l in text.splitlines() if l.startswith("label matches:")]
  assert len(summary) == 1
  assert summary[0].startswith(f"label matches: {len(matches)} of 5 positions")
  assert "1 (equivalent)" in summary[0] and "3 (not_equivalent)" in summary[0]
  assert (out / "neighbors.md").read_text() == text


def test_label_keys_rule(processor):
  # 'entailment' is '▁' 'en' 'tail' 'ment': no sub-word piece stands for it.
  assert [p for p in processor.encode_as_pieces("entailment")] == ["\u2581", "en", "tail", "ment"]
  labels = ["entailment", "not_entailment", "Positive", "not_equivalent"]
  keys = neighbors.label_keys(processor, labels)
  assert keys == [{"entailment"}, {"not_entailment"}, {"positive"},
                  {"not_equivalent", "equivalent"}]
  # 'not' is a word of two labels, so it tells neither apart; with one 'not' label it counts.
  assert neighbors.label_keys(processor, ["equivalent", "not_equivalent"]) == [
      {"equivalent"}, {"not_equivalent", "not"}]
  assert neighbors.match_labels(["\u2581En", "\u2581"], labels, keys) == []
  assert neighbors.match_labels(["\u2581positive"], labels, keys) == ["Positive"]
  assert neighbors.match_labels(["\u2581", "ment", "Not"], labels, keys) == []
  assert neighbors.match_labels(["\u2581Not_Entailment"], labels, keys) == ["not_entailment"]
  pair = ["equivalent", "not_equivalent"]
  pair_keys = neighbors.label_keys(processor, pair)
  assert neighbors.match_labels(["\u2581Equivalent"], pair, pair_keys) == ["equivalent"]
  assert neighbors.match_labels(["\u2581not"], pair, pair_keys) == ["not_equivalent"]


def test_class_labels_of_a_task(tmp_path):
  np.save(tmp_path / "p.npy", np.ones((2, 4), np.float32))
  text = neighbors.run(checkpoint=str(_tiny()), prompt=str(tmp_path / "p.npy"), top_k=2,
                       output_dir=str(tmp_path / "out"), vocabulary=str(_vocab()),
                       task="taskless_glue_rte_v002", task_module=["prompt_tuning.tasks.glue"])
  assert "class label (entailment, not_entailment)" in text


def _tiny():
  return shared_path("t5x_tiny", "checkpoint_3")


def _vocab():
  return shared_path("t5_vocab", "spiece.model")


def _run_cli(args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "prompt_tuning.neighbors", *args],
                        capture_output=True, text=True, env=env, timeout=120, check=False)


def test_cli_smop_numpy_checkpoint_folder(table, tmp_path):
  from prompt_tuning.storage import numpy_checkpoints  # pylint: disable=g-import-not-at-top
  prompts = np.random.RandomState(3).normal(size=(2, 3, 4)).astype(np.float32)
  folder = numpy_checkpoints.save(str(tmp_path / "run"), 7, {"encoder": {"prompt": {
      "prompt": prompts, "router": {"kernel": np.eye(4, 2, dtype=np.float32)}}}})
  out = tmp_path / "out"
  result = _run_cli([f"--checkpoint={_tiny()}", f"--prompt={folder}", "--top_k=4",
                     f"--output_dir={out}", f"--vocabulary={_vocab()}",
                     "--class_labels=positive,negative"])
  assert result.returncode == 0, result.stderr[-3000:]
  lines = (out / "neighbors.jsonl").read_text().splitlines()
  records = [json.loads(l) for l in lines]
  assert len(records) == 6
  for record in records:
    assert list(record) == ["prompt", "position", "ids", "pieces", "similarities",
                            "label_match"]
    assert len(record["ids"]) == len(record["pieces"]) == len(record["similarities"]) == 4
    assert all(isinstance(i, int) for i in record["ids"])
    assert record["similarities"] == sorted(record["similarities"], reverse=True)
  ref_ids, _ = _reference(prompts.reshape(6, 4), table, 4)
  assert [r["ids"] for r in records] == ref_ids.tolist()
  markdown = (out / "neighbors.md").read_text()
  assert result.stdout == markdown
  assert "| prompt | position | neighbours (cosine similarity) | label |" in markdown
  assert len([l for l in markdown.splitlines() if l.startswith("| 1 | 2 |")]) == 1
  assert markdown.count("label matches:") == 1


def _bad_inputs(tmp_path, released_dir):
  """case -> (run() overrides, words the error line must hold)."""
  np.save(tmp_path / "ok.npy", np.ones((3, 4), np.float32))
  np.save(tmp_path / "nan.npy", np.full((3, 4), np.nan, np.float32))
  (tmp_path / "prompt.txt").write_text("0.1 0.2")
  (tmp_path / "empty_folder").mkdir()
  released = str(released_dir / "rte.npy") if released_dir else None
  return {
      "missing_checkpoint": (dict(checkpoint=str(tmp_path / "nope")),
                             ["No T5X checkpoint", "nope"]),
      "missing_vocabulary": (dict(vocabulary=str(tmp_path / "nope.model")),
                             ["--vocabulary", "does not exist"]),
      "not_a_vocabulary": (dict(vocabulary=str(tmp_path / "ok.npy")),
                           ["not a SentencePiece model"]),
      "missing_prompt": (dict(prompt=str(tmp_path / "nope.npy")), ["--prompt", "does not exist"]),
      "not_npy": (dict(prompt=str(tmp_path / "prompt.txt")), ["is not a .npy file"]),
      "folder_without_prompt": (dict(prompt=str(tmp_path / "empty_folder")),
                                ["has no encoder.prompt.prompt.npy"]),
      "nan_prompt": (dict(prompt=str(tmp_path / "nan.npy")), ["NaN"]),
      "top_k_zero": (dict(top_k=0), ["--top_k", "got 0"]),
      "top_k_too_big": (dict(top_k=32001), ["--top_k must be in 1..32000", "32001"]),
      "labels_and_task": (dict(class_labels=["a"], task="t"), ["not both"]),
      "no_checkpoint_or_output": (dict(checkpoint=None, output_dir=""),
                                  ["missing --checkpoint, --output_dir"]),
      "output_dir_is_a_file": (dict(output_dir=str(tmp_path / "prompt.txt")),
                               ["--output_dir", "cannot be written"]),
      "released_prompt_dim": (dict(prompt=released),
                              ["[100, 768] (embedding dim 768)", "[32128, 4] (embedding dim 4)"]),
  }


@pytest.mark.parametrize("case", ["missing_checkpoint", "missing_vocabulary", "not_a_vocabulary",
                                  "missing_prompt", "not_npy", "folder_without_prompt",
                                  "nan_prompt", "top_k_zero", "top_k_too_big",
                                  "labels_and_task", "no_checkpoint_or_output",
                                  "output_dir_is_a_file"])
def test_bad_input_errors(case, tmp_path):
  overrides, needles = _bad_inputs(tmp_path, None)[case]
  args = dict(checkpoint=str(_tiny()), prompt=str(tmp_path / "ok.npy"), top_k=3,
              output_dir=str(tmp_path / "out"), vocabulary=str(_vocab()))
  args.update(overrides)
  with pytest.raises(neighbors.NeighborsError) as e:
    neighbors.run(**args)
  for needle in needles:
    assert needle in str(e.value)
  assert not (tmp_path / "out").exists()


def test_a_full_disk_leaves_no_folder_and_no_half_of_the_files(tmp_path, monkeypatch):
  from prompt_tuning.storage import file_utils  # pylint: disable=g-import-not-at-top
  _bad_inputs(tmp_path, None)  # writes ok.npy
  real = file_utils.write_text_atomic

  def second_write_fails(path, text):
    if path.endswith(neighbors.MARKDOWN_NAME):
      raise file_utils.disk_full_error(path)
    real(path, text)

  monkeypatch.setattr(file_utils, "write_text_atomic", second_write_fails)
  with pytest.raises(neighbors.NeighborsError, match="cannot be written .disk full"):
    neighbors.run(checkpoint=str(_tiny()), prompt=str(tmp_path / "ok.npy"), top_k=3,
                  output_dir=str(tmp_path / "out"), vocabulary=str(_vocab()))
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["released_prompt_dim", "missing_checkpoint", "top_k_zero",
                                  "not_npy"])
def test_cli_bad_input_one_error_line_nothing_written(case, tmp_path, request):
  # The authors' released prompt is [100, 768] (T5 1.1 Base): not for the tiny model.
  released = request.getfixturevalue("released_prompts_dir") if "released" in case else None
  overrides, needles = _bad_inputs(tmp_path, released)[case]
  args = dict(checkpoint=str(_tiny()), prompt=str(tmp_path / "ok.npy"), top_k=3,
              output_dir=str(tmp_path / "out"), vocabulary=str(_vocab()))
  args.update(overrides)
  result = _run_cli([f"--{k}={v}" for k, v in args.items()])
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith(f"{PROG}: error:")]
  assert len(lines) == 1, result.stderr[-3000:]
  for needle in needles:
    assert needle in lines[0], lines[0]
  assert result.stdout == ""
  assert not (tmp_path / "out").exists()


def test_default_vocabulary_is_the_tasks_default(monkeypatch):
  from prompt_tuning.tasks import features  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv(features.VOCABULARY_PATH_ENV, raising=False)
  assert neighbors.default_vocabulary_path() == features.default_vocabulary_path()
  monkeypatch.setenv(features.VOCABULARY_PATH_ENV, "/local/spiece.model")
  assert neighbors.default_vocabulary_path() == features.default_vocabulary_path()
