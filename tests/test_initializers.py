"""Prompt initialisers, checked row by row against a real checkpoint's embedding
table (the tiny T5X checkpoint: vocab 32128, emb 4) and T5's SentencePiece."""
from unittest import mock

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from prompt_tuning import configurables  # pylint: disable=unused-import  (gin names)
from prompt_tuning import gin_utils
from prompt_tuning.methods import initializers
from prompt_tuning.model import weights
from prompt_tuning.storage import t5x_checkpoints
from prompt_tuning.storage import trees
from prompt_tuning.tasks import labels as task_labels
from prompt_tuning.training import trainer

import helpers  # pylint: disable=g-bad-import-order

# A model with the tiny checkpoint's shapes (see ../shared/data/README.md).
TINY_CKPT_MODEL = helpers.TINY_CKPT_BINDINGS + ["NUM_EMBEDDINGS = 32128", "DROPOUT_RATE = 0.0"]


@gin.configurable("initializers_test_model")
def _configured_model(model=gin.REQUIRED):
  return model


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture
def table(tiny_checkpoint):
  params = t5x_checkpoints.load_params(tiny_checkpoint, ["token_embedder/embedding"],
                                   dtype=np.float32)
  return np.asarray(params["token_embedder"]["embedding"])


@pytest.fixture
def vocab(t5_vocab_path):
  return seqio.SentencePieceVocabulary(str(t5_vocab_path), extra_ids=100)


def row_ids(prompt, table):
  """The id of the table row each prompt row equals exactly (asserts there is one)."""
  prompt = np.asarray(prompt)
  ids = []
  for row in prompt.reshape(-1, prompt.shape[-1]):
    (found,) = np.nonzero(np.all(table == row, axis=-1))
    assert len(found) >= 1, f"{row} is not a row of the embedding table"
    ids.append(int(found[0]))
  return np.asarray(ids).reshape(prompt.shape[:-1])


def jit_init(init, shape, seed=0):
  """As weights.init_trainable runs it: inside jax.jit, on a traced rng."""
  return np.asarray(jax.jit(lambda rng: init(rng, shape, jnp.float32))(jax.random.PRNGKey(seed)))


# ---------------------------------------------------------------- functions


def test_random_uniform_range():
  prompt = jit_init(initializers.random_uniform(), (100, 16))
  assert prompt.min() >= -0.5 and prompt.max() <= 0.5 and prompt.std() > 0.2
  small = jit_init(initializers.random_uniform(scale=0.01), (100, 16))
  assert np.abs(small).max() <= 0.01


def test_sampled_vocab_rows_are_distinct_common_tokens(tiny_checkpoint, table):
  init = initializers.sampled_vocab(str(tiny_checkpoint))
  prompt = jit_init(init, (20, 4))
  ids = row_ids(prompt, table)
  assert len(set(ids.tolist())) == 20 and ids.max() < initializers.POPULATION_SIZE
  np.testing.assert_array_equal(prompt, table[ids])
  np.testing.assert_array_equal(jit_init(init, (20, 4)), prompt)  # deterministic given seed
  assert not np.array_equal(jit_init(init, (20, 4), seed=1), prompt)
  small = row_ids(jit_init(initializers.sampled_vocab(str(tiny_checkpoint), 30), (30, 4)), table)
  assert sorted(small.tolist()) == list(range(30))  # the whole population, once each


def test_sampled_vocab_longer_than_population_warns(tiny_checkpoint, table):
  with mock.patch.object(initializers.logging, "warning") as warning:
    prompt = jit_init(initializers.sampled_vocab(str(tiny_checkpoint), 3), (5, 4))
  assert "WITH replacement" in warning.call_args[0][0]
  assert row_ids(prompt, table).max() < 3


def test_sampled_vocab_several_prompts_are_independent(tiny_checkpoint, table):
  prompts = jit_init(initializers.sampled_vocab(str(tiny_checkpoint)), (4, 5, 4))
  ids = row_ids(prompts, table)
  assert ids.shape == (4, 5) and ids.max() < initializers.POPULATION_SIZE
  assert all(len(set(row.tolist())) == 5 for row in ids)
  assert len({tuple(row.tolist()) for row in ids}) == 4


def test_class_labels_rows_and_fill(tiny_checkpoint, table, vocab):
  labels = ["acceptable", "unacceptable", "not_entailment"]
  pieces = [vocab.encode(label) for label in labels]
  assert len(pieces[2]) > 1 and pieces[1][0] >= initializers.POPULATION_SIZE
  init = initializers.class_labels(labels, vocabulary=vocab, checkpoint_path=str(tiny_checkpoint))
  prompt = jit_init(init, (8, 4))
  for i, ids in enumerate(pieces):
    np.testing.assert_allclose(prompt[i], table[ids].mean(0), rtol=1e-6)
  fill = row_ids(prompt[3:], table)
  assert len(set(fill.tolist())) == 5 and fill.max() < initializers.POPULATION_SIZE
  # SMoP: every prompt starts with the labels, the fill differs.
  several = jit_init(init, (3, 8, 4))
  np.testing.assert_allclose(several[:, :3], np.broadcast_to(prompt[:3], (3, 3, 4)), rtol=1e-6)
  assert not np.array_equal(several[0, 3:], several[1, 3:])


def test_class_labels_from_the_task(tiny_checkpoint, table, vocab):
  task_labels.register_class_labels("initializers_test_task", ["positive", "negative"])
  init = initializers.class_labels(None, "initializers_test_task", vocab, str(tiny_checkpoint))
  prompt = jit_init(init, (3, 4))
  np.testing.assert_array_equal(prompt[:2], table[[1465, 2841]])  # '▁positive', '▁negative'
  with pytest.raises(initializers.PromptInitError, match="no registered class labels"):
    jit_init(initializers.class_labels(None, "no_such_task", vocab, str(tiny_checkpoint)), (3, 4))


def test_class_labels_more_than_rows_is_an_error(tiny_checkpoint, vocab):
  init = initializers.class_labels(["a", "b", "c"], None, vocab, str(tiny_checkpoint))
  with pytest.raises(initializers.PromptInitError, match="3 class labels .* PROMPT_LENGTH 2"):
    jit_init(init, (2, 4))


def test_from_string(tiny_checkpoint, table, vocab):
  text = "Classify the sentiment:"
  ids = vocab.encode(text)
  init = initializers.from_string(text, vocab, str(tiny_checkpoint))
  prompt = jit_init(init, (10, 4))
  np.testing.assert_array_equal(prompt[:len(ids)], table[ids])
  assert row_ids(prompt[len(ids):], table).max() < initializers.POPULATION_SIZE
  with pytest.raises(initializers.PromptInitError, match="longer than the prompt"):
    jit_init(init, (3, 4))


def test_from_file_shapes(tmp_path):
  value = np.arange(20, dtype=np.float32).reshape(5, 4)
  np.save(tmp_path / "p.npy", value)
  init = initializers.from_file(str(tmp_path / "p.npy"))
  np.testing.assert_array_equal(jit_init(init, (5, 4)), value)
  np.testing.assert_array_equal(jit_init(init, (3, 5, 4)), np.broadcast_to(value, (3, 5, 4)))
  with pytest.raises(initializers.PromptInitError, match=r"\[5, 4\].*\[6, 4\]"):
    jit_init(init, (6, 4))
  with pytest.raises(initializers.PromptInitError, match=r"\[5, 4\].*\[2, 6, 4\]"):
    jit_init(init, (2, 6, 4))


def test_embedding_errors(tiny_checkpoint):
  with pytest.raises(initializers.PromptInitError, match="INITIAL_CHECKPOINT_PATH"):
    jit_init(initializers.sampled_vocab(None), (5, 4))
  with pytest.raises(initializers.PromptInitError, match="embedding size is 8"):
    jit_init(initializers.sampled_vocab(str(tiny_checkpoint)), (5, 8))


# ---------------------------------------------------------------- gin files


def configured_init(gin_file, bindings):
  """`prompts.Prompt.init` as the model files plus `gin_file` configure it."""
  gin_utils.parse(helpers.TINY_FILES + [gin_file], TINY_CKPT_MODEL + list(bindings))
  return initializers.prompt_file_or()


def test_gin_random_uniform():
  init = configured_init("prompts/random_uniform.gin", ["initializers.random_uniform.scale = 0.1"])
  prompt = jit_init(init, (20, 4))
  assert np.abs(prompt).max() <= 0.1 and prompt.std() > 0.01


def test_gin_sampled_vocab(tiny_checkpoint, table):
  init = configured_init("prompts/sampled_vocab.gin", [
      f"INITIAL_CHECKPOINT_PATH = '{tiny_checkpoint}'", "POPULATION_SIZE = 100"])
  assert row_ids(jit_init(init, (20, 4)), table).max() < 100


def test_gin_class_labels(tiny_checkpoint, table, t5_vocab_path):
  task_labels.register_class_labels("initializers_test_gin_task", ["yes", "no"])
  bindings = [f"INITIAL_CHECKPOINT_PATH = '{tiny_checkpoint}'",
              f"seqio.SentencePieceVocabulary.sentencepiece_model_file = '{t5_vocab_path}'"]
  init = configured_init("prompts/class_labels.gin",
                         bindings + ["MIXTURE_OR_TASK_NAME = 'initializers_test_gin_task'"])
  np.testing.assert_array_equal(jit_init(init, (5, 4))[:2], table[[4273, 150]])
  gin.clear_config()
  init = configured_init("prompts/class_labels.gin", bindings + [
      "MIXTURE_OR_TASK_NAME = 'initializers_test_gin_task'", "CLASS_LABELS = ['positive']"])
  np.testing.assert_array_equal(jit_init(init, (5, 4))[:1], table[[1465]])


def test_gin_from_string(tiny_checkpoint, table, t5_vocab_path):
  init = configured_init("prompts/from_string.gin", [
      f"INITIAL_CHECKPOINT_PATH = '{tiny_checkpoint}'",
      f"seqio.SentencePieceVocabulary.sentencepiece_model_file = '{t5_vocab_path}'",
      "PROMPT_STRING = 'yes no'"])
  np.testing.assert_array_equal(jit_init(init, (5, 4))[:2], table[[4273, 150]])


def test_gin_from_file(tmp_path):
  value = np.ones((5, 4), np.float32)
  np.save(tmp_path / "p.npy", value)
  init = configured_init("prompts/from_file.gin", [f"PROMPT_FILE = '{tmp_path / 'p.npy'}'"])
  np.testing.assert_array_equal(jit_init(init, (5, 4)), value)


def test_model_init_with_smop_and_sampled_vocab(tiny_checkpoint, table):
  """The trainable init of a SMoP model on the tiny checkpoint: rows of its table."""
  gin_utils.parse(
      helpers.TINY_FILES + ["prompts/smop.gin", "prompts/sampled_vocab.gin"],
      TINY_CKPT_MODEL + [f"INITIAL_CHECKPOINT_PATH = '{tiny_checkpoint}'",
                         "initializers_test_model.model = %MODEL"])
  model = _configured_model()
  gin.clear_config()
  trainable = weights.init_trainable(model, jax.random.PRNGKey(0),
                                          weights.dummy_batch(1, 8, 4),
                                          trainer.DEFAULT_TRAINABLE)
  flat = trees.flatten(trainable)
  assert trees.shapes(trainable) == {"encoder/prompt/prompt": (4, 5, 4),
                                           "encoder/prompt/router/kernel": (4, 4)}
  ids = row_ids(flat["encoder/prompt/prompt"], table)
  assert ids.max() < initializers.POPULATION_SIZE
  assert all(len(set(row.tolist())) == 5 for row in ids)


# ---------------------------------------------------------------- prompt lengths


SMALL_MODEL = ["DROPOUT_RATE = 0.0", "EMBED_DIM = 8", "NUM_HEADS = 1", "NUM_ENCODER_LAYERS = 1",
               "NUM_DECODER_LAYERS = 1"]


@pytest.fixture(scope="module")
def small_frozen():
  """The frozen weights of a small model (they do not depend on PROMPT_LENGTH)."""
  model = helpers.build_model(SMALL_MODEL)
  params = weights.init_random(model, jax.random.PRNGKey(1), weights.dummy_batch(1, 8, 4))
  return trees.split(params, trainer.DEFAULT_TRAINABLE)[1]


@pytest.mark.parametrize("length", [1, 5, 20, 100, 150])
def test_prompt_length_trains(length, small_frozen):
  """Init and one loss/gradient step of a tiny model for each PROMPT_LENGTH."""
  model = helpers.build_model(SMALL_MODEL + [f"PROMPT_LENGTH = {length}"])
  batch = weights.dummy_batch(2, 8, 4)
  trainable = weights.init_trainable(model, jax.random.PRNGKey(0), batch,
                                          trainer.DEFAULT_TRAINABLE)
  loss, grads = jax.jit(jax.value_and_grad(
      lambda tr: model.loss_fn(trees.merge(tr, small_frozen), batch)[0]))(trainable)
  grad = trees.flatten(grads)["encoder/prompt/prompt"]
  assert grad.shape == (length, 8)
  assert np.isfinite(float(loss)) and np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
