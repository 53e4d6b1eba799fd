"""Fixtures for the ensemble and pt-infer tests: two small byte-level tasks
(48 validation examples each), `mp_last_word` (greedy decoding) and
`mp_class` (class labels x, y, z: rank classification), their mixture
`mp_both`, `mp_last_word_b` (mp_last_word under another name), and a random
frozen model whose predictions depend on the prompt."""
import random
import types

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.evaluation import job as eval_job
from prompt_tuning.evaluation import seqio_eval
from prompt_tuning.evaluation import trained
from prompt_tuning import gin_utils
from prompt_tuning.methods import sites
from prompt_tuning.model import partitioning
from prompt_tuning.model import weights
from prompt_tuning.storage import numpy_checkpoints
from prompt_tuning.storage import t5x_checkpoints
from prompt_tuning.storage import trees
from prompt_tuning.tasks import demo
from prompt_tuning.tasks import labels

import helpers  # pylint: disable=g-bad-import-order

SIZE = 48
LENGTHS = {"inputs": 32, "targets": 8}
# One layer per stack and no dropout: quick to compile.
SMALL = ["DROPOUT_RATE = 0.0", "NUM_ENCODER_LAYERS = 1", "NUM_DECODER_LAYERS = 1"]
CLASS_LABELS = ["x", "y", "z"]


def _target(mode, words):
  if mode == "class":  # 3 words in order / 3 words out of order / 4 words
    return "z" if len(words) == 4 else "x" if words[0] < words[-1] else "y"
  return words[-1]


def examples(mode):
  rng = random.Random(f"multiprompt-{mode}")
  out = []
  for _ in range(SIZE):
    words = rng.sample(demo.WORDS, rng.choice([3, 4]))
    out.append({"inputs": " ".join(words), "targets": _target(mode, words)})
  return out


def _source(mode):
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    rows = examples(mode)
    return tf.data.Dataset.from_tensor_slices({
        "inputs": [e["inputs"] for e in rows], "targets": [e["targets"] for e in rows]})
  return seqio.FunctionDataSource(dataset_fn, splits=("validation",),
                                  num_input_examples={"validation": SIZE})


TASKS = {"mp_last_word": "last", "mp_class": "class"}
# mp_last_word under another name (for pt-infer: two greedy tasks, two prompts).
ALIASES = {"mp_last_word_b": "last"}
for _name, _mode in {**TASKS, **ALIASES}.items():
  if _name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        _name, source=_source(_mode),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=demo.OUTPUT_FEATURES, metric_fns=[demo.exact_match])
labels.register_class_labels("mp_class", CLASS_LABELS)
if "mp_both" not in seqio.MixtureRegistry.names():
  seqio.MixtureRegistry.add("mp_both", list(TASKS), default_rate=1.0)


def frozen_model(directory):
  """(the small model, a T5X checkpoint of random frozen weights, those
  weights). The decoder's cross-attention output is scaled up 4x so that the
  encoder, and with it the prompt, sways the predictions of a random model."""
  model = helpers.build_model(SMALL)
  params = weights.init_random(model, jax.random.PRNGKey(0),
                                    weights.dummy_batch(1, 8, 4))
  frozen = trees.flatten(trees.split(params, ["encoder/prompt/.*"])[1])
  frozen = trees.unflatten({
      name: value * 4 if "encoder_decoder_attention/out" in name else value
      for name, value in frozen.items()})
  ckpt = t5x_checkpoints.save_checkpoint(str(directory), jax.device_get(frozen), 0)
  return model, ckpt, frozen


def abstract_trainable(model):
  return weights.abstract_trainable(model, sites.DEFAULT_TRAINABLE)


def evaluate(ckpt, out, bindings, files=()):
  """pt-eval's job (prompt_tuning.evaluation.job.evaluate) on the tiny model, through gin."""
  gin.clear_config()
  gin_utils.parse(helpers.TINY_FILES + list(files) + ["runs/prompt_eval.gin"],
                  helpers.TINY_BINDINGS + [f"CHECKPOINT_PATH = '{ckpt}'",
                                           f"EVAL_OUTPUT_DIR = '{out}'"] + list(bindings))
  try:
    return eval_job.evaluate()
  finally:
    gin.clear_config()


_SHARED = {}
_CHECKPOINTS = {}


def shared_checkpoint(tmp_path_factory):
  """frozen_model's (model, checkpoint, weights), made once per test session."""
  key = str(tmp_path_factory.getbasetemp())
  if key not in _CHECKPOINTS:
    _CHECKPOINTS[key] = frozen_model(tmp_path_factory.mktemp("frozen"))
  return _CHECKPOINTS[key]


def shared_runs(tmp_path_factory):
  """Computed once per test session (by whichever module asks first):

  root, ckpt, model, frozen, mesh, evaluator and class_evaluator (seqio
  Evaluators of mp_both and mp_class: they serve any model), and
  members: three [6, 32] prompts, two of them close (a shared prompt plus a
    little noise) so members agree on some examples and split on others: two
    .npy files and a numpy checkpoint folder of step 7;
  singles: for each member, the folder of its own evaluation on mp_both by
    pt-eval's evaluation (load_trainable, a seqio Evaluator, seqio_eval.run),
    all on one model object (compiled once) and one Evaluator;
  short: a [4, 32] prompt (.npy) and short_eval, its evaluation on mp_class by
    a model with PROMPT_LENGTH 4.
  """
  key = str(tmp_path_factory.getbasetemp())
  if key in _SHARED:
    return _SHARED[key]
  root = tmp_path_factory.mktemp("multiprompt")
  model, ckpt, frozen = shared_checkpoint(tmp_path_factory)
  bases = [np.random.RandomState(seed).uniform(-0.5, 0.5, (6, 32)) for seed in (0, 1)]
  values = [(bases[min(i, 1)] + 0.15 * np.random.RandomState(i + 2).uniform(-1, 1, (6, 32)))
            .astype("f4") for i in range(3)]
  members = []
  for i, value in enumerate(values[:2]):
    np.save(root / f"prompt{i}.npy", value)
    members.append(str(root / f"prompt{i}.npy"))
  members.append(numpy_checkpoints.save(str(root / "run2"), 7,
                                        {"encoder": {"prompt": {"prompt": values[2]}}}))
  mesh = partitioning.make_mesh()
  singles = [root / f"single{i}" for i in range(len(members))]
  evaluator = seqio_eval.make_evaluator(model, "mp_both", LENGTHS, "validation", str(singles[0]),
                                        16, False, mesh)
  abstract = abstract_trainable(model)
  for path, single in zip(members, singles):
    trainable, step, _ = trained.load_trainable(abstract, path, None)
    with evaluator.loggers.writing_to(str(single)):
      seqio_eval.run(evaluator, model, trees.merge(trainable, frozen), step, 16, mesh)
  short = root / "short.npy"
  np.save(short, np.random.RandomState(9).uniform(-0.5, 0.5, (4, 32)).astype("f4"))
  short_model = helpers.build_model(SMALL + ["PROMPT_LENGTH = 4"])
  short_evaluator = seqio_eval.make_evaluator(short_model, "mp_class", LENGTHS, "validation",
                                              str(root / "short_eval"), 16, False, mesh)
  trainable, _, _ = trained.load_trainable(abstract_trainable(short_model), str(short), None)
  seqio_eval.run(short_evaluator, short_model, trees.merge(trainable, frozen), 0, 16,
                 mesh)
  _SHARED[key] = types.SimpleNamespace(root=root, ckpt=ckpt, model=model, frozen=frozen,
                                       mesh=mesh, evaluator=evaluator,
                                       class_evaluator=short_evaluator, members=members,
                                       singles=singles, short=str(short),
                                       short_eval=root / "short_eval")
  return _SHARED[key]
