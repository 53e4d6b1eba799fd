"""pt-infer: examples of three tasks in shared batches, each with its own
prompt (of different lengths), predict what per-task pt-eval runs predict; bad input
is one clear error naming the line or the task (a user error: pt-infer prints
it as one `pt-infer: error:` line and exits 1, as cli.run does for pt-eval)."""
import json
import os
import sys
import types

from absl import flags
import gin
import numpy as np
import pytest

from prompt_tuning import cli
from prompt_tuning import data
from prompt_tuning.evaluation import predict
from prompt_tuning import infer
from prompt_tuning.methods import initializers

import helpers  # pylint: disable=g-bad-import-order
import multiprompt_fixtures  # pylint: disable=g-bad-import-order  (also registers the mp_* tasks)


def jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def cli_args(shared, *extra):
  bindings = [b for b in helpers.TINY_BINDINGS if not b.startswith("MIXTURE_OR_TASK_NAME")]
  bindings += multiprompt_fixtures.SMALL + [
      "MIXTURE_OR_TASK_MODULE = 'multiprompt_fixtures'", "BATCH_SIZE = 16",
      f"CHECKPOINT_PATH = '{shared.ckpt}'"]
  return (["--gin_file=" + f for f in helpers.TINY_FILES] + ["--gin_file=runs/prompt_infer.gin"]
          + helpers.as_flags(bindings) + list(extra))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  """pt-infer on three tasks' examples interleaved: mp_last_word with the
  6-token prompt of a numpy checkpoint folder, mp_last_word_b (the same task
  under another name) with another 6-token prompt, mp_class with a 4-token
  .npy; the two greedy tasks share every batch. Returns (references by task,
  mp_class's label scores, input lines, the process, its output lines)."""
  shared = multiprompt_fixtures.shared_runs(tmp_path_factory)
  references = {  # the per-task pt-eval evaluations of the same prompts
      "mp_last_word": jsonl(shared.singles[2] / "mp_last_word-000007.jsonl"),
      "mp_last_word_b": jsonl(shared.singles[0] / "mp_last_word-000000.jsonl"),
      "mp_class": jsonl(shared.short_eval / "mp_class-000000.jsonl")}
  scores = {r["index"]: r["label_scores"]
            for r in jsonl(shared.short_eval / "mp_class-000000-label_scores.jsonl")}
  lines = []
  for i in range(multiprompt_fixtures.SIZE):
    order = ["mp_class", "mp_last_word", "mp_last_word_b"]
    for task in order[i % 3:] + order[:i % 3]:
      lines.append({"task": task, "id": i,
                    "inputs": references[task][i]["input"]["inputs_pretokenized"]})
  root = tmp_path_factory.mktemp("infer")
  (root / "in.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines) + "\n")
  result = helpers.run_cli_here("pt-infer", cli_args(
      shared, f"--input={root / 'in.jsonl'}", f"--output={root / 'out.jsonl'}",
      f"--prompts=mp_last_word={shared.members[2]},mp_class={shared.short}",
      f"--prompts=mp_last_word_b={shared.members[0]}"))
  assert result.returncode == 0, result.stderr[-3000:]
  return references, scores, lines, result, jsonl(root / "out.jsonl")


def test_mixed_batches_predict_what_per_task_pt_eval_predicts(mixed):
  references, scores, lines, _, outputs = mixed
  # The two greedy tasks' prompts predict differently: a mix-up would show.
  assert any(a["output"] != b["output"] for a, b in
             zip(references["mp_last_word"], references["mp_last_word_b"]))
  assert len(outputs) == len(lines)
  for line, out in zip(lines, outputs):
    assert {k: out[k] for k in line} == line  # the input's keys, in input order
    assert out["prediction"] == references[line["task"]][line["id"]]["output"], out
    assert np.isfinite(out["score"]) and out["score"] < 0
    if line["task"] == "mp_class":
      want = scores[line["id"]]
      assert set(out["label_scores"]) == set(multiprompt_fixtures.CLASS_LABELS)
      for label, score in want.items():
        assert out["label_scores"][label] == pytest.approx(score, rel=1e-5, abs=1e-5)
      assert out["score"] == max(out["label_scores"].values())
    else:
      assert "label_scores" not in out


def test_prints_a_summary(mixed):
  _, _, lines, result, _ = mixed
  summary = [l for l in result.stdout.splitlines() if l.startswith("pt-infer:")]
  assert len(summary) == 1, result.stdout
  # Batches of 16: the greedy tasks' 96 examples share 6, mp_class's 48 take 3.
  assert (f"{len(lines)} examples of 3 tasks (mp_class 48, mp_last_word 48, "
          "mp_last_word_b 48) in 9 batch(es)") in summary[0]


# ------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("case,content,needles", [
    ("malformed", '{"task": "mp_class", "inputs": "a b c"}\n{"task": "mp_class", "inputs":\n',
     ["line 2", "not valid JSON"]),
    ("unknown_task", '\n{"task": "mp_class", "inputs": "a"}\n{"task": "nope", "inputs": "a"}\n',
     ["line 3", "unknown task 'nope'"]),
    ("no_prompt",
     '{"task": "mp_class", "inputs": "a"}\n{"task": "demo_last_word", "inputs": "a"}\n',
     ["line 2", "no prompt for task 'demo_last_word'", "given: mp_class, mp_last_word"]),
    ("mixture", '{"task": "mp_both", "inputs": "a"}\n', ["line 1", "'mp_both' is a mixture"]),
    ("no_inputs", '{"task": "mp_class", "text": "a"}\n', ["line 1", '"inputs" must be a string']),
    ("not_an_object", '["mp_class", "a"]\n', ["line 1", "expected a JSON object"]),
    ("empty", "\n\n", ["holds no examples"]),
    ("not_utf8", b'{"task": "mp_class", "inputs": "a"}\n{"task": "mp_class", "inputs": "\xff"}\n',
     ["line 2: not UTF-8 (byte 33 of the line)"]),
])
def test_bad_input_lines_name_the_line(case, content, needles, tmp_path):
  del case
  import prompt_tuning.tasks.demo  # pylint: disable=g-import-not-at-top,unused-import
  (tmp_path / "in.jsonl").write_bytes(content if isinstance(content, bytes) else content.encode())
  with pytest.raises(data.DataError) as raised:
    predict.read_examples(str(tmp_path / "in.jsonl"), {"mp_class", "mp_last_word"})
  message = str(raised.value)
  assert isinstance(raised.value, cli.user_errors())  # pt-infer: error: <message>, exit 1
  assert "\n" not in message and str(tmp_path / "in.jsonl") in message
  for needle in needles:
    assert needle in message, message


def test_output_that_is_a_folder_is_refused_before_anything_runs(tmp_path):
  (tmp_path / "out").mkdir()
  with pytest.raises(data.DataError) as raised:
    predict.OutputWriter(str(tmp_path / "out"), [{"task": "mp_class", "inputs": "a"}])
  assert str(raised.value) == (f"--output {tmp_path / 'out'} is a folder, not a file: give a "
                               "file path")
  assert os.listdir(tmp_path / "out") == []


def test_a_line_may_hold_a_raw_line_separator(tmp_path):
  """JSONL lines end at "\\n" only: U+2028 and U+2029 are valid inside JSON
  strings (json.dumps(..., ensure_ascii=False) writes them raw)."""
  import prompt_tuning.tasks.demo  # pylint: disable=g-import-not-at-top,unused-import
  lines = [{"task": "mp_class", "inputs": "a\u2028b"}, {"task": "mp_class", "inputs": "c\u2029"}]
  (tmp_path / "in.jsonl").write_text(
      "".join(json.dumps(l, ensure_ascii=False) + "\n" for l in lines), encoding="utf-8")
  assert predict.read_examples(str(tmp_path / "in.jsonl"), {"mp_class"}) == lines


@pytest.mark.parametrize("specs,needle", [
    (["mp_class"], "is not TASK=PATH"), (["mp_class=a.npy", "mp_class=b.npy"], "twice"),
    ([], "no prompts")])
def test_bad_prompt_lists(specs, needle):
  with pytest.raises(initializers.PromptInitError, match=needle) as raised:
    predict.parse_prompts(specs)
  assert isinstance(raised.value, cli.user_errors())


def test_prompt_paths_may_hold_commas():
  tasks = {"rte", "cb", "boolq"}
  specs = ["rte=/runs/PROMPT_LENGTH=10,RANDOM_SEED=0/numpy_checkpoints/checkpoint_5,cb=/p/cb.npy",
           "boolq=/p/a,b.npy"]
  assert predict.parse_prompts(specs, tasks) == {
      "rte": "/runs/PROMPT_LENGTH=10,RANDOM_SEED=0/numpy_checkpoints/checkpoint_5",
      "cb": "/p/cb.npy", "boolq": "/p/a,b.npy"}


def test_a_prompt_of_another_width_names_its_task(tmp_path):
  model = helpers.build_model(multiprompt_fixtures.SMALL)
  np.save(tmp_path / "good.npy", np.zeros((5, 32), np.float32))
  np.save(tmp_path / "narrow.npy", np.zeros((5, 16), np.float32))
  with pytest.raises(initializers.PromptInitError) as raised:
    predict.load_prompts(model, multiprompt_fixtures.abstract_trainable(model), {
        "mp_class": str(tmp_path / "good.npy"), "mp_last_word": str(tmp_path / "narrow.npy")})
  assert str(raised.value).startswith(f"--prompts mp_last_word={tmp_path / 'narrow.npy'}: ")
  assert "[5, 16]" in str(raised.value)


def test_command_prints_one_error_line_and_exits_1(tmp_path, monkeypatch, capsys):
  """The pt-infer command (console_main, in this process) on a bad line."""
  (tmp_path / "in.jsonl").write_text('{"task": "mp_class", "inputs": "a b"}\n{"task": 3}\n')
  np.save(tmp_path / "p.npy", np.zeros((6, 32), np.float32))
  monkeypatch.setattr(sys, "argv", ["pt-infer"] + cli_args(
      types.SimpleNamespace(ckpt=tmp_path / "no_checkpoint"),
      f"--input={tmp_path / 'in.jsonl'}", f"--output={tmp_path / 'out.jsonl'}",
      f"--prompts=mp_class={tmp_path / 'p.npy'}"))
  try:
    with pytest.raises(SystemExit) as raised:
      infer.console_main()
  finally:
    gin.clear_config()
    flags.FLAGS.unparse_flags()
  assert raised.value.code == 1
  lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("pt-infer:")]
  assert len(lines) == 1 and lines[0].startswith("pt-infer: error: "), lines
  assert "line 2" in lines[0] and '"task" must be a string' in lines[0]
  assert not (tmp_path / "out.jsonl").exists()
