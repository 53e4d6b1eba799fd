"""Prompt ensembles in pt-eval (PROMPT_FILES): every member's results equal a
single-prompt pt-eval of that prompt, the ensemble predicts the members'
majority (ties to the higher summed score), and bad member lists fail with
one line naming the member."""
import collections
import json

import jax
import numpy as np
import pytest

from prompt_tuning import configurables
from prompt_tuning.evaluation import ensemble
from prompt_tuning.evaluation import seqio_eval
from prompt_tuning.evaluation import trained
from prompt_tuning.methods import initializers
from prompt_tuning.methods import multiprompt
from prompt_tuning.storage import numpy_checkpoints
from prompt_tuning.storage import trees

import helpers  # pylint: disable=g-bad-import-order
import multiprompt_fixtures  # pylint: disable=g-bad-import-order  (also registers the mp_* tasks)

TASKS = ["mp_last_word", "mp_class"]
STEPS = [0, 0, 7]  # the third member is a numpy checkpoint folder of step 7
BINDINGS = multiprompt_fixtures.SMALL + [
    "MIXTURE_OR_TASK_NAME = 'mp_both'", "MIXTURE_OR_TASK_MODULE = 'multiprompt_fixtures'",
    "BATCH_SIZE = 16"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(member paths, their single-prompt evaluations' folders, the ensemble's
  folder, its result): the ensemble by ensemble.run with the same model,
  frozen weights and seqio Evaluator as the single runs (pt-eval's path from
  PROMPT_FILES to ensemble.run is test_smop_members_match_their_single_runs)."""
  shared = multiprompt_fixtures.shared_runs(tmp_path_factory)
  out = shared.root / "ens"
  abstract = multiprompt_fixtures.abstract_trainable(shared.model)
  members = ensemble.load_members(abstract, shared.model, None, shared.members)
  result = ensemble.run(shared.evaluator, shared.model, members, shared.frozen, 16, shared.mesh,
                        out_dir=str(out))
  return shared.members, shared.singles, out, result, shared


def greedy_summed_scores(shared, task):
  """{example: [N]}: each member's greedy output (pt-eval's predict_fn) scored
  by model.score_batch under every member and summed, computed apart from the
  ensemble."""
  ds = shared.evaluator.cached_model_datasets[task]
  features = dict(ds.as_numpy_iterator())
  abstract = multiprompt_fixtures.abstract_trainable(shared.model)
  params = [trees.merge(trained.load_trainable(abstract, p, None)[0], shared.frozen)
            for p in shared.members]
  outputs = [dict(seqio_eval.ModelFns(shared.model, p, 16, shared.mesh, 8).predict_fn(ds))
             for p in params]
  examples = sorted(features)
  targets = np.asarray([outputs[j][e] for e in examples for j in range(len(params))], np.int32)
  batch = {"encoder_input_tokens": np.repeat(np.stack(
               [features[e]["encoder_input_tokens"] for e in examples]), len(params), axis=0),
           "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
           "decoder_target_tokens": targets}
  score = jax.jit(shared.model.score_batch)
  summed = sum(np.asarray(score(p, batch)) for p in params).reshape(len(examples), len(params))
  return dict(zip(examples, summed))


def jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_members_equal_single_prompt_pt_eval(runs):
  paths, singles, ens, result, _ = runs
  for i, single in enumerate(singles):
    step = STEPS[i]
    member = ens / f"member_{i}"
    for task in TASKS + ["mp_both"]:
      assert jsonl(member / f"{task}-metrics.jsonl") == jsonl(single / f"{task}-metrics.jsonl")
    for task in TASKS:
      got = jsonl(member / f"{task}-{step:06}.jsonl")
      want = jsonl(single / f"{task}-{step:06}.jsonl")
      assert [r["output"] for r in got] == [r["output"] for r in want]
      logged = jsonl(single / f"{task}-metrics.jsonl")[-1]
      assert result[f"member_{i}"][task] == {k: v for k, v in logged.items() if k != "step"}
    got = jsonl(member / f"mp_class-{step:06}-label_scores.jsonl")
    want = jsonl(single / f"mp_class-{step:06}-label_scores.jsonl")
    for g, w in zip(sorted(got, key=lambda r: r["index"]), sorted(want, key=lambda r: r["index"])):
      assert g["prediction"] == w["prediction"]
      for label, score in w["label_scores"].items():
        assert g["label_scores"][label] == pytest.approx(score, rel=1e-5, abs=1e-5)
  summary = json.loads((ens / "ensemble_summary.json").read_text())
  assert [m["source"] for m in summary["members"]] == paths
  assert [m["step"] for m in summary["members"]] == STEPS
  assert summary["ensemble_step"] == 0  # the members' steps differ
  assert summary["metrics"] == json.loads(json.dumps(result))


def test_ensemble_is_the_majority_of_the_separate_runs(runs):
  _, singles, ens, result, shared = runs
  greedy_summed = greedy_summed_scores(shared, "mp_last_word")
  seen = collections.Counter()
  for task in TASKS:
    separate = [jsonl(single / f"{task}-{step:06}.jsonl") for step, single in zip(STEPS, singles)]
    scores = [{r["index"]: r["label_scores"] for r in
               jsonl(single / f"{task}-{step:06}-label_scores.jsonl")}
              if task == "mp_class" else None for step, single in zip(STEPS, singles)]
    rows = jsonl(ens / "ensemble" / f"{task}-000000.jsonl")
    votes = jsonl(ens / "ensemble" / f"{task}-000000-votes.jsonl")
    assert len(rows) == len(votes) == multiprompt_fixtures.SIZE
    correct = 0
    for e, (row, vote) in enumerate(zip(rows, votes)):
      members = [s[e]["output"] for s in separate]
      assert vote["votes"] == members and vote["index"] == e
      assert vote["input"] == row["input"]["inputs_pretokenized"]
      assert vote["target"] == row["input"]["targets_pretokenized"] == row["target"]
      counts = collections.Counter(members)
      top = [p for p, c in counts.items() if c == max(counts.values())]
      assert vote["tie"] == (len(top) > 1)
      if len(top) == 1:
        expected = top[0]
        seen["majority over a dissent" if len(counts) > 1 else "unanimous"] += 1
      elif scores[0] is not None:  # rank: the summed label log-likelihood of the separate runs
        summed = {p: sum(s[e][p] for s in scores) for p in top}
        expected = max(top, key=summed.get)
        assert summed[expected] > min(summed.values())
        seen["rank tie"] += 1
      else:  # greedy: each member's sequence scored under every member, summed
        summed = greedy_summed[e]
        np.testing.assert_allclose(vote["summed_scores"], summed, rtol=1e-5)
        expected = members[max(range(len(members)), key=lambda j: (members[j] in top, summed[j]))]
        seen["greedy tie"] += 1
      assert row["output"] == vote["prediction"] == expected, (task, e)
      correct += row["output"] == row["target"]
    assert result["ensemble"][task]["accuracy"] == pytest.approx(100 * correct / len(rows))
  # The fixture exercises every branch.
  assert min(seen[k] for k in ("unanimous", "majority over a dissent", "rank tie",
                               "greedy tie")) > 0, seen


def test_majority_vote_ties_go_to_the_summed_score():
  def same(preds):
    return np.asarray([[[a == b for b in p] for a in p] for p in preds])

  preds = [["A", "B", "B", "A", "C"],   # A and B 2 votes each: B's summed score is higher
           ["A", "B", "B", "A", "C"],   # the same votes, A's summed score higher
           ["A", "A", "B", "C", "D"],   # A has the majority though B scores higher
           ["A", "B", "C", "D", "E"],   # all tied: the best summed score
           ["A", "A", "A", "A", "A"]]
  summed = np.asarray([[-3.0, -1.0, -1.0, -3.0, 0.0],
                       [-1.0, -3.0, -3.0, -1.0, 0.0],
                       [-5.0, -5.0, -1.0, -9.0, -9.0],
                       [-4.0, -3.0, -2.0, -np.inf, -2.5],
                       [0.0] * 5])
  winner, votes, tie = map(np.asarray, multiprompt.majority_vote(same(preds), summed))
  assert winner.tolist() == [1, 0, 0, 2, 0]
  assert votes.tolist() == [[2, 2, 2, 2, 1], [2, 2, 2, 2, 1], [2, 2, 1, 1, 1], [1] * 5, [5] * 5]
  assert tie.tolist() == [True, True, False, True, False]


# ------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def plain_model():
  model = helpers.build_model()
  return model, multiprompt_fixtures.abstract_trainable(model)


def smop_folder(root):
  return numpy_checkpoints.save(str(root / "smop_run"), 3, {"encoder": {"prompt": {
      "prompt": np.zeros((4, 5, 32), np.float32),
      "router": {"kernel": np.zeros((32, 4), np.float32)}}}})


@pytest.mark.parametrize("case", ["both", "empty", "not_a_list", "wrong_shape", "missing",
                                  "mixed", "smop_on_plain_model"])
def test_bad_member_lists_name_the_member(case, plain_model, tmp_path):
  model, abstract = plain_model
  good = str(tmp_path / "good.npy")
  np.save(good, np.zeros((6, 32), np.float32))
  prompt_file, files = None, [good]
  if case == "both":
    prompt_file, needles = good, ["PROMPT_FILE or PROMPT_FILES, not both"]
  elif case == "empty":
    files, needles = [], ["PROMPT_FILES is empty"]
  elif case == "not_a_list":
    files, needles = good, ["PROMPT_FILES must be a list"]
  elif case == "wrong_shape":
    np.save(tmp_path / "long.npy", np.zeros((7, 32), np.float32))
    files = [good, str(tmp_path / "long.npy")]
    needles = ["PROMPT_FILES[1]", "long.npy", "[7, 32]", "[6, 32]"]
  elif case == "missing":
    files, needles = [good, good, str(tmp_path / "nope.npy")], ["PROMPT_FILES[2]", "does not exist"]
  elif case == "mixed":
    files = [good, smop_folder(tmp_path)]
    needles = ["mixes SMoP", "PROMPT_FILES[1]", "smop_run", "plain prompts (PROMPT_FILES[0]"]
  else:
    files, needles = [smop_folder(tmp_path)], ["PROMPT_FILES[0]", "is a SMoP prompt",
                                                "prompts/smop.gin"]
  with pytest.raises(initializers.PromptInitError) as raised:
    ensemble.load_members(abstract, model, prompt_file, files)
  message = str(raised.value)
  assert "\n" not in message
  for needle in needles:
    assert needle in message, message


def test_pt_eval_refuses_prompt_file_with_prompt_files(tmp_path):
  np.save(tmp_path / "p.npy", np.zeros((6, 32), np.float32))
  with pytest.raises(initializers.PromptInitError, match="PROMPT_FILE or PROMPT_FILES, not both"):
    multiprompt_fixtures.evaluate(tmp_path / "no_checkpoint", tmp_path / "out", BINDINGS + [
        f"PROMPT_FILE = '{tmp_path / 'p.npy'}'", f"PROMPT_FILES = ['{tmp_path / 'p.npy'}']"])
  assert not (tmp_path / "out").exists()


def test_smop_members_match_their_single_runs(tmp_path_factory):
  """pt-eval's job with PROMPT_FILES (through gin) on two SMoP checkpoints:
  each member's metrics, routing shares included, equal the evaluation of
  that checkpoint alone."""
  shared = multiprompt_fixtures.shared_runs(tmp_path_factory)
  root = tmp_path_factory.mktemp("smop")
  members = []
  for i in range(2):
    rng = np.random.RandomState(i)
    members.append(numpy_checkpoints.save(str(root / f"smop{i}"), 5, {"encoder": {"prompt": {
        "prompt": rng.uniform(-0.5, 0.5, (4, 5, 32)).astype("f4"),
        "router": {"kernel": rng.normal(size=(32, 4)).astype("f4")}}}}))
  smop = multiprompt_fixtures.SMALL + ["PROMPT_LENGTH = 5"]
  result = multiprompt_fixtures.evaluate(shared.ckpt, root / "ens", smop + [
      "MIXTURE_OR_TASK_NAME = 'mp_class'", "MIXTURE_OR_TASK_MODULE = 'multiprompt_fixtures'",
      "BATCH_SIZE = 16", f"PROMPT_FILES = {members!r}"], ["prompts/smop.gin"])
  model = configurables.build_model(helpers.TINY_FILES + ["prompts/smop.gin"],
                                    helpers.MODEL_BINDINGS + smop)
  evaluator = shared.class_evaluator
  trainable, step, _ = trained.load_trainable(
      multiprompt_fixtures.abstract_trainable(model), members[1], None)
  with evaluator.loggers.writing_to(str(root / "single")):
    single = seqio_eval.run(evaluator, model, trees.merge(trainable, shared.frozen), step,
                            16, shared.mesh)
  assert result["member_1"] == single
  assert sorted(single["mp_class"]) == ["accuracy"] + [f"routing/prompt_{i}" for i in range(4)]
  assert result["member_0"]["mp_class"] != single["mp_class"]  # its own routing
  assert (jsonl(root / "ens" / "member_1" / "mp_class-metrics.jsonl")
          == jsonl(root / "single" / "mp_class-metrics.jsonl"))
  assert "routing/prompt_0" not in result["ensemble"]["mp_class"]
