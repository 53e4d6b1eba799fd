"""Length-aware padding (data.Padding, fit_batch, GROUP_BY_LENGTH): a batch
gives the same per-example losses, scores and predictions whichever bucket it
is padded to; pt-train with 'buckets' trains as with 'fixed'; bad padding
macros are one error line."""
import re

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import configurables
from prompt_tuning import data
from prompt_tuning.evaluation import seqio_eval
from prompt_tuning.model import weights
from prompt_tuning.storage import numpy_checkpoints
from prompt_tuning.storage import trees
from prompt_tuning.training import trainer

import helpers  # pylint: disable=g-bad-import-order

SMALL = ["DROPOUT_RATE = 0.0", "NUM_ENCODER_LAYERS = 1", "NUM_DECODER_LAYERS = 1"]
METHODS = {
    "prompt": ([], []),
    "smop": (["prompts/smop.gin"], []),
    "lora": (["methods/lora.gin"], ["LORA_RANK = 4"]),
    "prefix": (["methods/prefix.gin"], ["PREFIX_LENGTH = 3"]),
}
WIDTH, TARGETS = 64, 8


# --- the buckets -------------------------------------------------------------------


def test_default_ladder():
  ladder = data.Padding().ladder(512)
  assert ladder == (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
  assert all(b / a <= 1.5 for a, b in zip(ladder, ladder[1:]))
  assert data.Padding().ladder(8) == (8,)
  assert data.Padding().ladder(100)[-2:] == (96, 100)  # the max is always a bucket
  assert data.Padding(mode="fixed").ladder(512) == (512,)
  assert data.Padding(buckets=[32, 128]).ladder(512) == (32, 128, 512)
  assert [data.Padding().bucket(n, 512) for n in (0, 1, 8, 9, 172, 228, 512)] == [
      8, 8, 8, 12, 192, 256, 512]


@pytest.mark.parametrize("kwargs,needle", [
    ({"mode": "dynamic"}, "PADDING must be one of 'buckets', 'fixed'; got 'dynamic'"),
    ({"buckets": [64, 32]}, "PADDING_BUCKETS must be a list of increasing positive integers"),
    ({"buckets": [0, 32]}, "PADDING_BUCKETS must be a list of increasing positive integers"),
    ({"buckets": [32.5]}, "got [32.5]"),
    ({"buckets": []}, "PADDING_BUCKETS"),
    ({"buckets": "32"}, "PADDING_BUCKETS"),
    ({"group_by_length": 0}, "GROUP_BY_LENGTH must be a positive integer"),
    ({"group_by_length": True}, "GROUP_BY_LENGTH"),
])
def test_bad_settings(kwargs, needle):
  with pytest.raises(data.DataError) as e:
    data.configured_padding(**kwargs)
  assert needle in str(e.value)


def test_fit_batch_cuts_each_group_to_its_bucket():
  batch = {"encoder_input_tokens": np.zeros((2, 64), np.int32),
           "decoder_input_tokens": np.zeros((2, 16), np.int32),
           "decoder_target_tokens": np.zeros((2, 16), np.int32),
           "decoder_loss_weights": np.zeros((2, 16), np.int32),
           "index": np.arange(2)}
  batch["encoder_input_tokens"][1, :13] = 5
  batch["decoder_target_tokens"][0, :9] = 7
  batch["decoder_loss_weights"][0, :9] = 1
  batch["decoder_input_tokens"][0, 1:9] = 7
  fitted = data.fit_batch(batch, data.Padding())
  assert fitted["encoder_input_tokens"].shape == (2, 16)
  assert {fitted[k].shape for k in batch if k.startswith("decoder")} == {(2, 12)}
  assert fitted["index"] is batch["index"]
  np.testing.assert_array_equal(fitted["encoder_input_tokens"],
                                batch["encoder_input_tokens"][:, :16])
  assert data.fit_batch(batch, data.Padding(mode="fixed")) is batch
  wide = data.fit_batch(batch, data.Padding(buckets=[4, 40]))
  assert wide["encoder_input_tokens"].shape == (2, 40)
  assert data.padded_fraction(fitted) == pytest.approx(1 - (13 + 9) / (2 * 16 + 2 * 12))
  # A batch of padding only (an evaluation process whose part ran out).
  empty = data.fit_batch({k: v[:0] for k, v in batch.items()}, data.Padding())
  assert empty["encoder_input_tokens"].shape == (0, 8)


# --- exactness ---------------------------------------------------------------------


def _model(method):
  files, sizes = METHODS[method]
  return configurables.build_model(helpers.TINY_FILES + files,
                                   helpers.MODEL_BINDINGS + SMALL + sizes)


def _params(model, seed=0):
  """Random frozen and trainable parameters (the trainable ones perturbed, so
  LoRA's zero-initialised matrices count)."""
  shapes = weights.dummy_batch(1, 8, 4)
  params = weights.init_random(model, jax.random.PRNGKey(seed), shapes)
  trainable, frozen = trees.split(params, trainer.DEFAULT_TRAINABLE + (".*/lora/.*",
                                                                            ".*/prefix/.*"))
  leaves, tree = jax.tree_util.tree_flatten(trainable)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  leaves = [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  return trees.merge(jax.tree_util.tree_unflatten(tree, leaves), frozen)


def _batch(seed=0, rows=4):
  """Rows of different lengths, zero-padded to WIDTH and TARGETS (seqio's layout)."""
  rng = np.random.RandomState(seed)
  enc = np.zeros((rows, WIDTH), np.int32)
  tgt = np.zeros((rows, TARGETS), np.int32)
  for r, (n, t) in enumerate(zip([5, 17, 3, 11][:rows], [2, 5, 3, 4][:rows])):
    enc[r, :n] = rng.randint(3, 300, n)
    enc[r, n - 1] = 1
    tgt[r, :t] = rng.randint(3, 300, t)
    tgt[r, t - 1] = 1
  dec_in = np.concatenate([np.zeros((rows, 1), np.int32), tgt[:, :-1]], 1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt, "decoder_loss_weights": (tgt > 0).astype(np.int32)}


def _cut(batch, enc, dec):
  return {k: v[:, :enc] if k.startswith("encoder") else v[:, :dec] for k, v in batch.items()}


def _outputs_fn(model):
  return jax.jit(lambda params, batch: _outputs(model, params, batch))


def _outputs(model, params, batch):
  def per_example_loss(b):
    one = lambda row: model.loss_fn(params, {k: v[None] for k, v in row.items()})[0]
    return jax.vmap(one)(b)

  ids = np.asarray([[3, 1, 0], [7, 8, 1]], np.int32)
  return {"loss": per_example_loss(batch),
          "batch_loss": model.loss_fn(params, batch)[0],
          "score": model.score_batch(params, batch),
          "rank": seqio_eval.make_rank_fn(model, ids)(params, batch),
          "greedy": model.predict_batch(params, batch, max_decode_length=TARGETS)}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_outputs_do_not_depend_on_the_bucket(method):
  model = _model(method)
  params = _params(model)
  batch = _batch()
  fitted = data.fit_batch(batch, data.Padding())
  assert fitted["encoder_input_tokens"].shape[1] == 24  # longest row 17 -> bucket 24
  assert fitted["decoder_target_tokens"].shape[1] == TARGETS  # 8 is the only target bucket
  outputs = _outputs_fn(model)
  want = outputs(params, batch)
  for got in (outputs(params, fitted),) + ((outputs(params, _cut(batch, 17, 5)),)
                                           if method == "prompt" else ()):
    for key in want:
      if key == "greedy":
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
      else:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_smop_routes_alike_in_every_bucket():
  from prompt_tuning.methods import smop  # pylint: disable=g-import-not-at-top
  model = _model("smop")
  params = _params(model)
  batch = _batch()
  full = smop.routing_index(model.module, params, batch["encoder_input_tokens"])
  cut = smop.routing_index(model.module, params, batch["encoder_input_tokens"][:, :17])
  np.testing.assert_array_equal(full, cut)


# --- grouping by length ------------------------------------------------------------


def _demo_batches(padding, seed=0, n=6):
  ds = data.get_dataset("demo_last_word", {"inputs": 32, "targets": 8}, "train", 4, seed=seed,
                        padding=padding)
  return list(ds.take(n).as_numpy_iterator())


def test_group_by_length_is_deterministic_and_groups():
  from prompt_tuning.tasks import demo  # pylint: disable=g-import-not-at-top,unused-import
  grouped = data.Padding(group_by_length=3)
  a, b = _demo_batches(grouped), _demo_batches(grouped)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  plain = _demo_batches(data.Padding())
  # The same examples within each window of 3 batches, only regrouped.
  def rows(batches):
    return sorted(map(bytes, np.concatenate([x["encoder_input_tokens"] for x in batches])))
  assert rows(a[:3]) == rows(plain[:3]) and rows(a[3:6]) == rows(plain[3:6])
  spread = lambda bs: np.mean([np.ptp((x["encoder_input_tokens"] > 0).sum(1)) for x in bs])
  assert spread(a) <= spread(plain)
  assert all(x["encoder_input_tokens"].shape == (4, 32) for x in a)


# --- pt-train --------------------------------------------------------------------


def _losses(out):
  return [float(x) for x in re.findall(r"^step \d+/\d+ loss ([-\d.e]+)", out, re.M)]


def _prompt(model_dir):
  step = numpy_checkpoints.latest_step(str(model_dir))
  return np.load(f"{model_dir}/numpy_checkpoints/checkpoint_{step}/encoder.prompt.prompt.npy")


COMMON = ["EVAL_PERIOD = None", "LOG_PERIOD = 1", "DROPOUT_RATE = 0.0", "TRAIN_STEPS = 6",
          "CHECKPOINT_PERIOD = 3", "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 8}"]


def test_train_buckets_matches_fixed(tmp_path, frozen_ckpt, capsys):
  common = COMMON + [f"INITIAL_CHECKPOINT_PATH = '{frozen_ckpt}'"]
  helpers.train_in_process(tmp_path / "fixed", common + ["PADDING = 'fixed'"])
  fixed = _losses(capsys.readouterr().out)
  helpers.train_in_process(tmp_path / "buckets", common)
  buckets = _losses(capsys.readouterr().out)
  assert len(fixed) == len(buckets) == 6
  np.testing.assert_allclose(buckets, fixed, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(_prompt(tmp_path / "buckets"), _prompt(tmp_path / "fixed"),
                             rtol=1e-4, atol=1e-5)


def test_resume_with_buckets_and_grouping_is_exact(tmp_path, frozen_ckpt):
  common = COMMON + [f"INITIAL_CHECKPOINT_PATH = '{frozen_ckpt}'", "GROUP_BY_LENGTH = 2",
                     "DROPOUT_RATE = 0.1", "CHECKPOINT_PERIOD = 2"]
  helpers.train_in_process(tmp_path / "full", common)
  helpers.train_in_process(tmp_path / "killed", common + ["train.stop_after_step = 3"])
  assert numpy_checkpoints.latest_step(str(tmp_path / "killed")) == 2
  helpers.train_in_process(tmp_path / "killed", common)
  np.testing.assert_array_equal(_prompt(tmp_path / "killed"), _prompt(tmp_path / "full"))


# --- bad macros: one error line, MODEL_DIR untouched -------------------------------


@pytest.mark.parametrize("prog,flag,needles", [
    ("pt-train", "--gin.PADDING='dynamic'", ["PADDING must be one of 'buckets', 'fixed'",
                                             "got 'dynamic'"]),
    ("pt-train", "--gin.PADDING_BUCKETS=[64, 32]",
     ["PADDING_BUCKETS must be a list of increasing positive integers", "got [64, 32]"]),
    ("pt-train", "--gin.PADDING_BUCKETS=[0, 16]", ["PADDING_BUCKETS", "got [0, 16]"]),
    ("pt-train", "--gin.GROUP_BY_LENGTH=0", ["GROUP_BY_LENGTH must be a positive integer",
                                             "got 0"]),
    ("pt-eval", "--gin.PADDING_BUCKETS='big'", ["PADDING_BUCKETS", "got 'big'"]),
    ("pt-eval", "--gin.PADDING='none'", ["PADDING must be one of", "got 'none'"]),
])
def test_bad_padding_macro(prog, flag, needles, tmp_path, frozen_ckpt):
  import test_bad_input as bad  # pylint: disable=g-import-not-at-top
  model_dir = tmp_path / "run"
  if prog == "pt-train":
    args = bad.train_args(model_dir, frozen_ckpt, flag)
  else:
    model_dir.mkdir()
    args = bad.eval_args(model_dir, frozen_ckpt, tmp_path / "eval", flag)
  before = helpers.snapshot(model_dir) if model_dir.is_dir() else None
  status, err = helpers.run_cli_in_process(prog, args)
  bad.one_error_line(status, err, prog, *needles)
  if before is None:
    assert not model_dir.exists()
  else:
    assert helpers.snapshot(model_dir) == before
  assert not (tmp_path / "eval").exists()


def teardown_module():
  gin.clear_config()
