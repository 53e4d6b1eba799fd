"""Prompt initialisers: Flax initialisers `(rng, shape, dtype) -> array`.

Each is a gin configurable returning the initialiser, so a gin file under
`gin/prompts/` picks one for `prompts.Prompt.init` (through
`initializers.prompt_file_or.fallback`).

Shapes are `[P, d]` (one prompt) or `[..., P, d]` (several, e.g. SMoP's
`[k, P, d]`): every leading index is an independent prompt, initialised by the
same rule from its own split of the rng.

The initialisers run inside `jax.jit` tracing (`model_params.init_trainable`
jits the init): file I/O and tokenisation happen in Python at trace time, and
only the random draws use jax.random on the (traced) rng, so a run's initial
prompt is a deterministic function of its seed.
"""
import functools
import io
import math
from typing import Optional, Sequence

from absl import logging
import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.storage import file_utils
from prompt_tuning.storage import t5x_checkpoints

# SentencePiece ids are ordered by piece likelihood: the first 5000 are the most
# common tokens (Lester et al., 2021, sampled vocabulary initialisation).
POPULATION_SIZE = 5000
EMBEDDING_NAME = "token_embedder/embedding"
_NPY_MAGIC = b"\x93NUMPY"


class PromptInitError(ValueError):
  """A prompt that cannot be initialised as asked; the message says why."""


def check_positive(macro: str, value) -> int:
  """`value` if it is a positive integer (a prompt's length, a prompt count),
  else PromptInitError naming the macro: a 0-token prompt would train nothing."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise PromptInitError(f"{macro} must be a positive integer, got {value!r}")
  return int(value)


@gin.configurable(module="initializers")
def random_uniform(scale: float = 0.5):
  """Uniform in [-scale, scale] (the paper's random initialisation)."""
  def init(rng, shape, dtype=jnp.float32):
    return jax.random.uniform(rng, shape, dtype, minval=-scale, maxval=scale)
  return init


def _read_prompt_file(path: str) -> np.ndarray:
  """A readable, finite .npy array, or one clear error."""
  if not path:
    raise PromptInitError("PROMPT_FILE is empty: give the path of a .npy prompt")
  if not file_utils.exists(path):
    raise PromptInitError(f"PROMPT_FILE {path} does not exist: give the path of a .npy prompt")
  if file_utils.isdir(path):
    raise PromptInitError(f"PROMPT_FILE {path} is a folder: give the .npy prompt file in it")
  try:
    data = file_utils.read_bytes(path)
  except OSError as e:
    raise PromptInitError(f"PROMPT_FILE {path} cannot be read: {e}") from None
  if not data.startswith(_NPY_MAGIC):
    # numpy would suggest loading pickled data, which only misleads.
    raise PromptInitError(f"PROMPT_FILE {path} is not a .npy file (no .npy header): give a "
                          "prompt saved with numpy.save, e.g. a checkpoint's "
                          "encoder.prompt.prompt.npy")
  try:
    value = np.load(io.BytesIO(data), allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    text = str(e).strip()
    reason = text.splitlines()[0] if text else type(e).__name__
    raise PromptInitError(f"PROMPT_FILE {path} is not a readable .npy file: {reason}") from None
  if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
    raise PromptInitError(f"PROMPT_FILE {path} does not hold a numeric array "
                          f"(dtype {getattr(value, 'dtype', type(value).__name__)})")
  return value


def prompt_shape_problem(path: str, got, want) -> Optional[str]:
  """Why a prompt of shape `got` (from `path`) does not fit the model's `want`
  ([..., PROMPT_LENGTH, EMBED_DIM]), in one line; None when it fits."""
  got, want = tuple(got), tuple(want)
  if got == want:
    return None
  if got and want and got[-1] != want[-1]:
    return (f"PROMPT_FILE {path} is a prompt of embedding size {got[-1]} (shape "
            f"{list(got)}) but this model's EMBED_DIM is {want[-1]} (prompt {list(want)}): it "
            "was made for another model size; use a prompt trained for this model, or the "
            "model gin file of its size")
  if len(got) == len(want):
    return (f"PROMPT_FILE {path} has shape {list(got)} but the model's prompt is "
            f"{list(want)} ([PROMPT_LENGTH, EMBED_DIM]): set --gin.PROMPT_LENGTH={got[-2]} "
            "or use a prompt trained for this model")
  return (f"PROMPT_FILE {path} has shape {list(got)} but the model's prompt is {list(want)}: "
          "use a prompt trained for this model")


def _check_finite(path: str, value: np.ndarray) -> np.ndarray:
  if not np.all(np.isfinite(value)):
    raise PromptInitError(f"PROMPT_FILE {path} contains NaN or infinite values")
  return value


def load_prompt_file(path: str, shape) -> np.ndarray:
  """A .npy prompt of exactly `shape`, or one clear error."""
  value = _read_prompt_file(path)
  problem = prompt_shape_problem(path, value.shape, shape)
  if problem:
    raise PromptInitError(problem)
  return _check_finite(path, value)


@gin.configurable(module="initializers")
def from_file(path: str = gin.REQUIRED):
  """The prompt stored in a .npy file of the exact shape.

  For several prompts (`[k, P, d]`, SMoP) the file is either exactly that
  shape or one `[P, d]` prompt that every one of the k prompts starts from.
  """
  def init(rng, shape, dtype=jnp.float32):
    del rng
    shape = tuple(shape)
    if len(shape) <= 2:
      return jnp.asarray(load_prompt_file(path, shape), dtype)
    value = _read_prompt_file(path)
    if value.shape and value.shape[-1] != shape[-1]:
      raise PromptInitError(prompt_shape_problem(path, value.shape, shape))
    if tuple(value.shape) not in (shape, shape[-2:]):
      raise PromptInitError(
          f"PROMPT_FILE {path} has shape {list(value.shape)} but the model's prompts are "
          f"{list(shape)}: give a .npy of that shape, or one {list(shape[-2:])} prompt "
          "([PROMPT_LENGTH, EMBED_DIM]) to start every prompt from")
    value = np.broadcast_to(_check_finite(path, value), shape)
    return jnp.asarray(value, dtype)
  return init


@gin.configurable(module="initializers")
def prompt_file_or(path=None, fallback=gin.REQUIRED):
  """PROMPT_FILE when one is given, else the fallback initialiser."""
  return from_file(path) if path else fallback


# ------------------------------------------------ rows of the embedding table


def read_embedding(checkpoint_path: Optional[str], embed_dim: int, what: str) -> np.ndarray:
  """The frozen model's token embedding table [vocab, d] (float32) from a T5X checkpoint."""
  if not checkpoint_path:
    raise PromptInitError(
        f"{what} initialisation reads the frozen model's embedding table: set "
        "INITIAL_CHECKPOINT_PATH to its T5X checkpoint (or use prompts/random_uniform.gin)")
  params = t5x_checkpoints.load_params(checkpoint_path, [EMBEDDING_NAME], dtype=np.float32)
  table = np.asarray(params["token_embedder"]["embedding"])
  if table.ndim != 2 or table.shape[1] != embed_dim:
    raise PromptInitError(
        f"{checkpoint_path}: {EMBEDDING_NAME} is {list(table.shape)} but the prompt's "
        f"embedding size is {embed_dim} (check EMBED_DIM)")
  return table


def token_rows(table: np.ndarray, ids: Sequence[int], what: str) -> np.ndarray:
  """table[ids] [n, d], with a clear error for ids outside the table."""
  ids = np.asarray(list(ids), np.int64)
  bad = ids[(ids < 0) | (ids >= table.shape[0])]
  if bad.size:
    raise PromptInitError(
        f"{what}: token ids {sorted(set(bad.tolist()))} are outside the embedding table "
        f"({table.shape[0]} rows): does VOCABULARY match the checkpoint?")
  return table[ids]


def _sample_rows(rng, population: np.ndarray, count: int, what: str):
  """`count` rows of `population`, without replacement unless there are too few."""
  if count <= 0:
    return jnp.zeros((0, population.shape[1]), jnp.float32)
  size = population.shape[0]
  replace = count > size
  if replace:
    logging.warning("%s: %d prompt rows to fill from a population of %d tokens; "
                    "sampling WITH replacement", what, count, size)
  ids = jax.random.choice(rng, size, (count,), replace=replace)
  return jnp.take(jnp.asarray(population), ids, axis=0)


def _prompts_from_rows(rng, shape, dtype, fixed: np.ndarray, population: np.ndarray,
                       what: str):
  """[..., P, d]: each prompt is `fixed` [n, d] then rows drawn from `population`."""
  shape = tuple(shape)
  if len(shape) < 2:
    raise PromptInitError(f"{what}: a prompt is [PROMPT_LENGTH, EMBED_DIM], got {list(shape)}")
  length = shape[-2]
  if fixed.shape[0] > length:
    raise PromptInitError(f"{what}: {fixed.shape[0]} rows do not fit a prompt of "
                          f"PROMPT_LENGTH {length}")
  fixed = jnp.asarray(fixed, jnp.float32)

  def one(key):
    return jnp.concatenate([fixed, _sample_rows(key, population, length - fixed.shape[0],
                                                what)], axis=0)

  if len(shape) == 2:
    return jnp.asarray(one(rng), dtype)
  keys = jax.random.split(rng, math.prod(shape[:-2]))
  return jnp.asarray(jax.vmap(one)(keys).reshape(shape), dtype)


def _population(table: np.ndarray, population_size: int) -> np.ndarray:
  if population_size < 1:
    raise PromptInitError(f"POPULATION_SIZE must be >= 1, got {population_size}")
  return np.array(table[:population_size])


@gin.configurable(module="initializers")
def sampled_vocab(checkpoint_path: Optional[str] = gin.REQUIRED,
                  population_size: int = POPULATION_SIZE):
  """Each prompt row is the embedding of a token drawn from the most common ones.

  Rows are drawn without replacement from ids [0, population_size) of the
  frozen model's embedding table (with replacement, and a warning, only when
  the prompt is longer than the population).
  """
  @functools.lru_cache(maxsize=1)
  def population(embed_dim):  # read once per configured initialiser
    return _population(read_embedding(checkpoint_path, embed_dim, "sampled vocab"),
                       population_size)

  def init(rng, shape, dtype=jnp.float32):
    pop = population(shape[-1])
    return _prompts_from_rows(rng, shape, dtype, np.zeros((0, shape[-1]), np.float32), pop,
                              "sampled vocab")
  return init


def _encode(vocabulary, text: str, what: str) -> list:
  if vocabulary is None:
    raise PromptInitError(f"{what} initialisation needs VOCABULARY to tokenise {text!r}")
  from prompt_tuning.tasks import features  # pylint: disable=g-import-not-at-top
  problem = features.vocabulary_problem(vocabulary)
  if problem:
    raise PromptInitError(f"{what}: {problem}")
  ids = [int(i) for i in vocabulary.encode(text)]
  if not ids:
    raise PromptInitError(f"{what}: {text!r} tokenises into no tokens")
  return ids


def task_class_labels(task_name: Optional[str]) -> Optional[list]:
  """The label strings the task registered (prompt_tuning.tasks.labels), else None."""
  if not task_name:
    return None
  try:
    from prompt_tuning.tasks import labels as task_labels  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return task_labels.get_class_labels(task_name)


@gin.configurable(module="initializers")
def class_labels(labels: Optional[Sequence[str]] = None,
                 task_name: Optional[str] = None,
                 vocabulary=gin.REQUIRED,
                 checkpoint_path: Optional[str] = gin.REQUIRED,
                 population_size: int = POPULATION_SIZE):
  """Row i is the embedding of label i (the mean of its pieces' embeddings).

  `labels` None means the task's label strings (`tasks.labels`). Rows after
  the labels are filled as in `sampled_vocab`; more labels than rows is an
  error.
  """
  @functools.lru_cache(maxsize=1)
  def rows(embed_dim):
    if labels is None:
      names = task_class_labels(task_name)
    else:
      names = [labels] if isinstance(labels, str) else list(labels)
    if not names:
      raise PromptInitError(
          f"class-label initialisation: task {task_name!r} has no registered class labels; "
          "set them with --gin.CLASS_LABELS=\"['yes', 'no']\"")
    ids = [_encode(vocabulary, str(name), "class labels") for name in names]
    table = read_embedding(checkpoint_path, embed_dim, "class-label")
    fixed = np.stack([token_rows(table, i, f"class label {n!r}").mean(0)
                      for n, i in zip(names, ids)])
    return names, fixed, _population(table, population_size)

  def init(rng, shape, dtype=jnp.float32):
    names, fixed, pop = rows(shape[-1])
    if len(names) > shape[-2]:
      raise PromptInitError(
          f"{len(names)} class labels {names} do not fit a prompt of PROMPT_LENGTH "
          f"{shape[-2]}: use a longer prompt or fewer CLASS_LABELS")
    return _prompts_from_rows(rng, shape, dtype, fixed, pop, "class labels")
  return init


@gin.configurable(module="initializers")
def from_string(text: str = gin.REQUIRED,
                vocabulary=gin.REQUIRED,
                checkpoint_path: Optional[str] = gin.REQUIRED,
                population_size: int = POPULATION_SIZE):
  """The embedded tokens of `text` (no EOS), then rows as in `sampled_vocab`."""
  @functools.lru_cache(maxsize=1)
  def rows(embed_dim):
    if not text:
      raise PromptInitError("PROMPT_STRING is empty: give the text to start the prompt from")
    ids = _encode(vocabulary, text, "PROMPT_STRING")
    table = read_embedding(checkpoint_path, embed_dim, "PROMPT_STRING")
    return ids, token_rows(table, ids, "PROMPT_STRING"), _population(table, population_size)

  def init(rng, shape, dtype=jnp.float32):
    ids, fixed, pop = rows(shape[-1])
    if len(ids) > shape[-2]:
      raise PromptInitError(
          f"PROMPT_STRING {text!r} is {len(ids)} tokens, longer than the prompt "
          f"(PROMPT_LENGTH {shape[-2]}): shorten it or raise PROMPT_LENGTH")
    return _prompts_from_rows(rng, shape, dtype, fixed, pop, "PROMPT_STRING")
  return init
