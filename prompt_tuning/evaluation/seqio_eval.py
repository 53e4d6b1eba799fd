"""Evaluation with seqio.Evaluator: greedy predictions and target scores.

`predict_fn` decodes greedily up to TASK_FEATURE_LENGTHS['targets'];
`score_fn` returns the sum of target-token log-likelihoods. Both run the
jitted model over fixed-size batches (the last one padded and trimmed).
Results go through seqio's own JSONLogger (`{task}-metrics.jsonl`,
`{task}-{step:06}.jsonl`) and TensorBoardLogger. A mixture is evaluated task
by task, and `{mixture}-metrics.jsonl` gets every task's metrics plus their
average (each task's metrics averaged first). With a SMoP prompt, each task's
metrics also get `routing/prompt_i`: the share of its eval examples routed to
prompt i (not part of the mixture average).
"""
import functools
import json
import os
import re
import time
from typing import Mapping, Optional, Sequence

from absl import logging
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning import data
from prompt_tuning.storage import file_utils
from prompt_tuning import gin_utils
from prompt_tuning.methods import initializers
from prompt_tuning.model import losses
from prompt_tuning.model import weights
from prompt_tuning.storage import numpy_checkpoints
from prompt_tuning.storage import trees
from prompt_tuning.model import partitioning
from prompt_tuning import progress

DEFAULT_TRAINABLE = ("encoder/prompt/.*",)
EOS_ID = 1
from prompt_tuning.methods import smop

MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")


class EvalError(ValueError):
  """Evaluation that cannot run as configured (split, output folder, ...); says what to fix."""


def batches(ds, batch_size, mesh=None):
  """Yields (index, features) for every global batch of an enumerated dataset.

  Multi-process: the examples are split between the process groups of the
  mesh's data layout (processes that hold the same data shards form a group),
  each group reads only its part, and every process runs the same number of
  batches (the collective computations must line up), padded where its part
  runs out. `index` holds this process's rows' positions in `ds`, -1 for
  padding; `features` this process's rows of the global batch, for
  partitioning.shard_batch. One process: plain batches, the last one padded.
  Each batch's padding columns are cut to its bucket lengths (data.fit_batch).
  """
  layout = partitioning.data_layout(mesh) if mesh is not None else None
  groups, group = (layout.num_groups, layout.group) if layout else (1, 0)
  local = layout.local_batch(batch_size) if layout else batch_size
  if groups > 1:
    count = int(ds.reduce(np.int64(0), lambda n, _: n + 1))
    steps = -(-(-(-count // groups)) // local)  # ceil(ceil(count / groups) / local)
    ds = ds.shard(groups, group)
  else:
    steps = None
  iterator = ds.batch(local).as_numpy_iterator()
  done = 0
  while steps is None or done < steps:
    item = next(iterator, None)
    if item is None:
      if steps is None:
        return
      index, feats = np.zeros((0,), np.int64), None
    else:
      index, features = item
      feats = {k: features[k] for k in MODEL_FEATURES}
    if feats is None:  # this group's part ran out before the others'
      feats = {k: np.zeros((0,) + shape, dtype) for k, (shape, dtype) in _feature_specs(ds).items()}
    n = len(index)
    if n < local:
      index = np.concatenate([index, np.full(local - n, -1, index.dtype)])
      feats = {k: np.concatenate([v, np.zeros((local - n,) + v.shape[1:], v.dtype)])
               for k, v in feats.items()}
    done += 1
    # Cut to its bucket lengths (PADDING; all processes agree on them).
    yield index, data.fit_batch(feats)


def _feature_specs(ds):
  spec = ds.element_spec[1]
  return {k: (tuple(spec[k].shape[1:]), spec[k].dtype.as_numpy_dtype) for k in MODEL_FEATURES}


def global_index(mesh, index):
  """Every process's `index` rows (from `batches`), in global batch order."""
  if jax.process_count() == 1:
    return index
  return partitioning.gather(partitioning.shard_batch(mesh, index))


def label_token_ids(vocabulary, labels):
  """[K, T] ids of each label string followed by EOS (zero-padded)."""
  encoded = [list(vocabulary.encode(label)) + [EOS_ID] for label in labels]
  out = np.zeros((len(encoded), max(map(len, encoded))), np.int32)
  for k, ids in enumerate(encoded):
    out[k, :len(ids)] = ids
  return out


def make_rank_fn(model, label_ids):
  """(params, batch) -> [b, K] log-likelihood of every label; the encoder
  (with the prompt) runs once per example and is shared by all labels."""
  label_ids = jnp.asarray(label_ids)

  def rank(params, batch):
    encoded, mask = model.encode(params, batch["encoder_input_tokens"])
    b = encoded.shape[0]
    scores = []
    for k in range(label_ids.shape[0]):
      targets = jnp.broadcast_to(label_ids[k], (b, label_ids.shape[1]))
      inputs = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]  # shifted right, start id 0
      logits = model.decode_logits(params, encoded, mask, inputs, targets)
      ll = losses.token_log_likelihoods(logits, targets)
      scores.append(jnp.sum(ll * (targets > 0), axis=-1))
    return jnp.stack(scores, axis=-1)

  return rank


_JITTED = {}


def _jitted(key, build):
  """One jitted function per (model, kind, ...) for the whole process, so
  periodic evaluations and every task reuse their compilations."""
  if key not in _JITTED:
    _JITTED[key] = jax.jit(build())
  return _JITTED[key]


class ModelFns:
  """Jitted predict/score functions over a fixed parameter tree.

  `decoding`: 'greedy' decodes every task; 'rank' (rank classification)
  scores each label string of a task that has class labels
  (prompt_tuning.tasks.labels) and predicts the best, so the prediction is
  always a legal label; 'auto' = rank where labels exist, else greedy. Rank
  scores go to `{task}-{step:06}-label_scores.jsonl` beside seqio's files.
  """

  def __init__(self, model, params, batch_size, mesh, max_decode_length, evaluator=None,
               decoding="greedy", step=0, log_dir=None):
    self.model, self.params, self.batch_size, self.mesh = model, params, batch_size, mesh
    self._predict = _jitted((id(model), "predict", max_decode_length), lambda: functools.partial(
        model.predict_batch, max_decode_length=max_decode_length))
    self._score = _jitted((id(model), "score"), lambda: model.score_batch)
    self._decoding, self._step, self._log_dir = decoding, step, log_dir
    self._task_of = {}
    if evaluator is not None:
      self._task_of = {id(ds): name for name, ds in evaluator.cached_model_datasets.items()}

  def _run(self, fn, ds, what):
    out = []
    count = int(ds.cardinality())  # seqio's cached eval datasets know their size
    done = progress.counter("eval", what, count if count >= 0 else None, "examples",
                            enabled=jax.process_index() == 0)
    for index, feats in batches(ds, self.batch_size, self.mesh):
      result = partitioning.gather(fn(self.params, partitioning.shard_batch(self.mesh, feats)))
      index = global_index(self.mesh, index)
      out.extend((i, r) for i, r in zip(index.tolist(), result) if i >= 0)
      done(len(out))
    return out

  def _labels(self, task_name):
    if self._decoding == "greedy" or task_name is None:
      return None
    from prompt_tuning.tasks import labels  # pylint: disable=g-import-not-at-top
    found = labels.get_class_labels(task_name)
    if not found and self._decoding == "rank":
      logging.warning("%s has no class labels: decoding greedily", task_name)
    return found

  def predict_fn(self, ds, *unused_args):
    task_name = self._task_of.get(id(ds))
    label_strings = self._labels(task_name)
    if not label_strings:
      return [(i, tokens.tolist()) for i, tokens in self._run(
          self._predict, ds, f"{task_name or 'task'} step {self._step} greedy decoding")]
    vocabulary = seqio.get_mixture_or_task(task_name).output_features["targets"].vocabulary
    ids = label_token_ids(vocabulary, label_strings)
    rank = _jitted((id(self.model), "rank", ids.tobytes(), ids.shape),
                   lambda: make_rank_fn(self.model, ids))
    scored = self._run(rank, ds, f"{task_name} step {self._step} rank classification")
    if self._log_dir and jax.process_index() == 0:
      file_utils.write_text_atomic(
          os.path.join(self._log_dir, f"{task_name}-{self._step:06}-label_scores.jsonl"),
          "".join(json.dumps({"index": i, "label_scores": dict(zip(label_strings, map(float, s))),
                              "prediction": label_strings[int(np.argmax(s))]}) + "\n"
                  for i, s in scored))
    return [(i, ids[int(np.argmax(s))].tolist()) for i, s in scored]

  def score_fn(self, ds, *unused_args):
    task_name = self._task_of.get(id(ds))
    return [(i, float(score)) for i, score in self._run(
        self._score, ds, f"{task_name or 'task'} step {self._step} scoring")]


def check_split(mixture_or_task_name: str, split: str, *, setting: str = "EVAL_SPLIT",
                error=EvalError, hint: str = "", need_metrics: bool = False) -> None:
  """`error` unless some task of the task or mixture has the split (and, with
  need_metrics, metrics to compute on it); the message names the `setting`,
  lists the splits and ends with `hint`, what to set instead."""
  tasks = seqio.get_subtasks(data.get_task(mixture_or_task_name))
  if not any(split in task.splits for task in tasks):
    splits = sorted({s for task in tasks for s in task.splits})
    raise error(f"{setting} {split!r} is not a split of {mixture_or_task_name} (its splits: "
                f"{', '.join(splits) or 'none'})" + (f": {hint}" if hint else ""))
  if need_metrics and not seqio.evaluation.get_valid_eval_tasks(tasks, split):
    raise error(f"nothing to evaluate: no task of {mixture_or_task_name} has metrics "
                f"(metric_fns) for its {split!r} split")


def make_evaluator(model, mixture_or_task_name, task_feature_lengths, split, log_dir,
                   batch_size, use_cached, mesh, make_log_dir=True):
  """A seqio.Evaluator (None, with a warning, if no task of it has metrics).

  Reads every task's `split` (seqio caches it), so a split that cannot be read
  fails here, as EvalError. The evaluator's loggers write nothing until it runs;
  make_log_dir=False leaves `log_dir` for the caller to create before then.
  """
  del model, batch_size, mesh
  data.get_task(mixture_or_task_name)
  # Every process computes the metrics (from the gathered outputs); process 0 writes them.
  writes = jax.process_index() == 0
  try:
    evaluator = seqio.Evaluator(
        mixture_or_task_name, feature_converter=data.feature_converter(), eval_split=split,
        use_cached=use_cached, sequence_length=dict(task_feature_lengths),
        logger_cls=[seqio.JSONLogger, seqio.TensorBoardLogger] if writes else (),
        log_dir=log_dir, async_compute_metrics=False)
  except (ValueError, KeyError, FileNotFoundError, tf.errors.OpError) as e:
    text = str(e).strip()
    message = text.splitlines()[0] if text else type(e).__name__
    raise EvalError(f"cannot read split {split!r} of {mixture_or_task_name!r} for "
                    f"evaluation: {message}") from None
  if writes and make_log_dir:
    file_utils.makedirs(log_dir)
  if not evaluator.eval_tasks:
    logging.warning("%s has no task with metrics on split %r: evaluation is skipped",
                    mixture_or_task_name, split)
    return None
  evaluator.mixture_or_task_name = mixture_or_task_name
  evaluator.log_dir = log_dir
  return evaluator


def _scalar(value):
  return float(value.value) if isinstance(value, seqio.metrics.Scalar) else float(value)


def mixture_summary(metrics_by_task: Mapping[str, Mapping[str, object]]) -> dict:
  """{'task/metric': v, ..., 'average': mean over tasks of each task's mean metric}."""
  out, task_means = {}, []
  for task, metrics in sorted(metrics_by_task.items()):
    values = []
    for name, value in metrics.items():
      try:
        values.append(_scalar(value))
      except (TypeError, ValueError):
        continue
      out[f"{task}/{name}"] = values[-1]
    if values:
      task_means.append(float(np.mean(values)))
  if task_means:
    out["average"] = float(np.mean(task_means))
  return out


def routing_metrics(evaluator, model, params, batch_size, mesh) -> dict:
  """SMoP only: {task: {'routing/prompt_i': share of its eval examples}}."""
  if not smop.is_smop(model):
    return {}
  return {task.name: smop.routing_metrics(smop.routing_fractions(model, params, (
      (global_index(mesh, index), partitioning.shard_batch(mesh, feats)) for index, feats in
      batches(evaluator.cached_model_datasets[task.name], batch_size, mesh))))
          for task in evaluator.eval_tasks}


def _logging_also(logger, extra):
  """A seqio logger that adds extra[task_name] to each task's metrics."""
  def log(*, task_name, metrics, **kwargs):
    more = {k: seqio.metrics.Scalar(v) for k, v in extra.get(task_name, {}).items()}
    return logger(task_name=task_name, metrics={**metrics, **more}, **kwargs)
  return log


DECODINGS = ("auto", "rank", "greedy", "both")


def run(evaluator, model, params, step, batch_size, mesh, max_decode_length=None,
        decoding="auto"):
  """Evaluates `params`; returns {task: {metric: float}} (plus the mixture summary).

  decoding='both' evaluates twice, with rank classification and with greedy
  decoding (the paper's protocol), logged under `rank/` and `greedy/` of the
  output folder and printed side by side; the returned dict is the rank one.
  """
  if evaluator is None:
    return {}
  if decoding not in DECODINGS:
    raise ValueError(f"EVAL_DECODING must be one of {DECODINGS}, got {decoding!r}")
  if decoding == "both":
    loggers = evaluator._loggers  # pylint: disable=protected-access
    results = {}
    try:
      for mode in ("greedy", "rank"):
        sub = os.path.join(evaluator.log_dir, mode)
        file_utils.makedirs(sub)
        evaluator._loggers = tuple(type(l)(output_dir=sub) for l in loggers)  # pylint: disable=protected-access
        results[mode] = run(evaluator, model, params, step, batch_size, mesh,
                            max_decode_length, mode)
    finally:
      evaluator._loggers = loggers  # pylint: disable=protected-access
    return results["rank"]
  lengths = evaluator.model_feature_shapes
  decode_len = max_decode_length or lengths["decoder_target_tokens"][0]
  fns = ModelFns(model, params, batch_size, mesh, decode_len, evaluator, decoding, step,
                 evaluator._loggers[0].output_dir if evaluator._loggers else None)  # pylint: disable=protected-access
  routing = routing_metrics(evaluator, model, params, batch_size, mesh)
  loggers = evaluator._loggers  # pylint: disable=protected-access
  if routing:  # merged into each task's own metrics line
    evaluator._loggers = tuple(_logging_also(l, routing) for l in loggers)  # pylint: disable=protected-access
  start = time.time()
  try:
    all_metrics, _ = evaluator.evaluate(compute_metrics=True, step=step,
                                        predict_fn=fns.predict_fn, score_fn=fns.score_fn)
    metrics = all_metrics.result() if hasattr(all_metrics, "result") else all_metrics
  finally:
    evaluator._loggers = loggers  # pylint: disable=protected-access
  result = {task: {k: _scalar(v) for k, v in m.items()} for task, m in metrics.items()}
  name = evaluator.mixture_or_task_name
  if len(result) > 1 or name not in result:
    summary = mixture_summary(result)
    for logger in evaluator._loggers:  # pylint: disable=protected-access
      logger(task_name=name, step=step,
             metrics={k: seqio.metrics.Scalar(v) for k, v in summary.items()},
             dataset=None, inferences=None, targets=None)
    result[name] = summary
  for task, values in routing.items():
    result.setdefault(task, {}).update(values)
  for task, m in sorted(result.items()) if jax.process_index() == 0 else ():
    print(f"eval step {step} {task} ({decoding}, {time.time() - start:.1f}s): " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(m.items())),
          flush=True)
  return result


# The pt-eval job.


def _step_of(path: str) -> int:
  match = re.search(r"checkpoint_(\d+)", path)
  return int(match.group(1)) if match else 0


def load_trainable(abstract_trainable, prompt_file: Optional[str], model_dir: Optional[str]):
  """(trainable params, step, where) from PROMPT_FILE or MODEL_DIR's latest checkpoint."""
  names = trees.shapes(abstract_trainable)
  if prompt_file and not file_utils.exists(prompt_file):
    raise initializers.PromptInitError(
        f"PROMPT_FILE {prompt_file} does not exist: give a .npy prompt or a numpy checkpoint "
        "folder")
  if prompt_file and not prompt_file.endswith(".npy") and file_utils.isdir(prompt_file):
    directory = prompt_file  # a numpy checkpoint folder
  elif prompt_file:
    if len(names) != 1:
      raise initializers.PromptInitError(
          f"PROMPT_FILE {prompt_file} is one array but this model trains {sorted(names)}: "
          "point PROMPT_FILE at the numpy checkpoint folder instead")
    (name, shape), = names.items()
    numpy_checkpoints.check_file(prompt_file)  # against checksums.json, if beside it
    value = initializers.load_prompt_file(prompt_file, shape)
    return trees.unflatten({name: value}), _step_of(prompt_file), prompt_file
  elif model_dir and numpy_checkpoints.latest_step(model_dir) is not None:
    # The newest checkpoint that verifies; damaged ones are reported, never moved.
    step = numpy_checkpoints.latest_intact_step(model_dir, move_aside=False)
    if step is None:
      raise numpy_checkpoints.CheckpointDamagedError(
          f"every numpy checkpoint in {model_dir} is damaged (see the warnings): set "
          "PROMPT_FILE to an intact prompt")
    directory = numpy_checkpoints.checkpoint_dir(model_dir, step)
  else:
    raise initializers.PromptInitError(
        "no prompt to evaluate: set PROMPT_FILE to a .npy prompt, or MODEL_DIR to a run "
        "with numpy_checkpoints")
  missing = [n for n in names if not file_utils.exists(
      os.path.join(directory, numpy_checkpoints.param_filename(n)))]
  if missing:
    raise initializers.PromptInitError(
        f"{directory} lacks {', '.join(numpy_checkpoints.param_filename(n) for n in missing)}")
  params = numpy_checkpoints.load_params(directory, names)
  for name, value in trees.flatten(params).items():
    got, want = tuple(value.shape), tuple(names[name])
    if got and want and got[-1] != want[-1]:
      raise initializers.PromptInitError(
          f"{directory}: {name} has embedding size {got[-1]} (shape {list(got)}) but this "
          f"model's EMBED_DIM is {want[-1]} ({list(want)}): it was made for another model "
          "size; use the model gin file of its size, or a prompt trained for this model")
    if got != want:
      raise initializers.PromptInitError(
          f"{directory}: {name} has shape {list(got)}, the model expects "
          f"{list(want)} (check PROMPT_LENGTH)")
  return params, _step_of(directory), directory


@gin.configurable(module="evaluation")
def evaluate(*,
             model=gin.REQUIRED,
             mixture_or_task_name: str = gin.REQUIRED,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             batch_size: int = gin.REQUIRED,
             checkpoint_path: Optional[str] = None,
             initial_checkpoint_path: Optional[str] = None,
             prompt_file: Optional[str] = None,
             model_dir: Optional[str] = None,
             eval_output_dir: Optional[str] = None,
             split: str = "validation",
             use_cached_tasks: bool = False,
             mixture_or_task_module=None,
             trainable_params: Sequence[str] = DEFAULT_TRAINABLE,
             mesh_fn=partitioning.make_mesh,
             decoding: str = "auto",
             vocabulary=None,
             superglue_data_dir: Optional[str] = None,
             squad_data_dir: Optional[str] = None,
             mrqa_data_dir: Optional[str] = None,
             prompt_files: Optional[Sequence[str]] = None):
  """Evaluates and returns {task: {metric: value}}.

  With PROMPT_FILES (several prompts), evaluates them as an ensemble in one
  batched pass (prompt_tuning.evaluation.ensemble) and returns {member_i or 'ensemble':
  {task: {metric: value}}}.
  """
  # Every setting is checked, and the prompt, frozen model and evaluation data
  # read, before anything is written.
  gin_utils.check_int("BATCH_SIZE", batch_size, EvalError)
  lengths = gin_utils.check_feature_lengths(task_feature_lengths, EvalError)
  gin_utils.check_choice("EVAL_DECODING", decoding, DECODINGS, EvalError)
  if not isinstance(split, str) or not split:
    raise EvalError(f"EVAL_SPLIT must be a split name such as 'validation', got {split!r}")
  frozen_path = checkpoint_path or initial_checkpoint_path
  if not frozen_path:
    raise initializers.PromptInitError(
        "no frozen model: set CHECKPOINT_PATH (or INITIAL_CHECKPOINT_PATH) to a T5X checkpoint")
  if eval_output_dir:
    output_dir = gin_utils.check_folder("EVAL_OUTPUT_DIR", eval_output_dir, EvalError)
  elif model_dir:
    output_dir = os.path.join(gin_utils.check_folder("MODEL_DIR", model_dir, EvalError),
                              "inference_eval")
  else:
    raise EvalError("set EVAL_OUTPUT_DIR (or MODEL_DIR) for the results")
  data.configure_sources(vocabulary, superglue_data_dir, squad_data_dir, mrqa_data_dir)
  data.import_task_modules(mixture_or_task_module)
  data.get_task(mixture_or_task_name)
  data.check_vocabularies(mixture_or_task_name)
  check_split(mixture_or_task_name, split, need_metrics=True,
              hint="set --gin.EVAL_SPLIT to one of them")
  mesh = mesh_fn()
  batch = weights.dummy_batch(1, lengths["inputs"], lengths["targets"])
  abstract_trainable = trees.split(
      nn.unbox(weights.abstract_params(model, batch)), trainable_params)[0]
  if prompt_files is not None:
    from prompt_tuning.evaluation import ensemble  # pylint: disable=g-import-not-at-top
    members = ensemble.load_members(abstract_trainable, model, prompt_file, prompt_files)
    frozen = weights.load_frozen(model, frozen_path, batch, trainable_params, mesh)
    evaluator = make_evaluator(model, mixture_or_task_name, lengths, split, output_dir,
                               batch_size, use_cached_tasks, mesh)
    return ensemble.run(evaluator, model, members, frozen, batch_size, mesh, decoding)
  trainable, step, source = load_trainable(abstract_trainable, prompt_file, model_dir)
  frozen = weights.load_frozen(model, frozen_path, batch, trainable_params, mesh)
  trainable = partitioning.replicate(mesh, trainable)
  evaluator = make_evaluator(model, mixture_or_task_name, lengths, split, output_dir,
                             batch_size, use_cached_tasks, mesh)
  if jax.process_index() == 0:
    print(f"Evaluating {source} (step {step}) on {mixture_or_task_name}:{split}", flush=True)
  return run(evaluator, model, trees.merge(trainable, frozen), step, batch_size, mesh,
             decoding=decoding)
