"""The prompt-tuning loop behind `pt-train`.

Only the trainable subtree (by default `encoder/prompt/...`) is differentiated
and given optimizer state; the frozen model is an argument of the jitted step,
so no gradient of a frozen weight is ever computed and the frozen arrays are
never written. Every input is validated before MODEL_DIR is touched.

Resume: the step, optimizer state and RNG seed live in the numpy checkpoint,
and so does the data position: each process's tf.data iterator state
(data_state, T5X's `train_ds-*` files), restored on resume without replaying
the batches before it. A checkpoint without it (older version, a pipeline
that cannot be checkpointed, another data layout) resumes by replaying the
stream (the seqio dataset is deterministic for a seed), so a rerun continues
exactly either way.

Multi-host (T5X's discipline): every process runs this same function; the
seed and the resume step are checked equal on all processes; each reads only
its data shards (partitioning.DataLayout); process 0 alone writes files
(config.gin, run.json, checkpoints, TensorBoard, eval results) and prints,
with a barrier after each checkpoint so no process runs ahead of a write.
"""
import dataclasses
import os
import time
from typing import Optional, Sequence

from absl import logging
import flax.serialization
import gin
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np

from prompt_tuning import data
from prompt_tuning.evaluation import seqio_eval
from prompt_tuning import gin_utils
from prompt_tuning import methods
from prompt_tuning.methods import sites
from prompt_tuning.model import partitioning
from prompt_tuning.model import weights
from prompt_tuning import progress as progress_lib
from prompt_tuning.storage import file_utils
from prompt_tuning.storage import numpy_checkpoints
from prompt_tuning.storage import run_json
from prompt_tuning.storage import run_lock
from prompt_tuning.storage import t5x_checkpoints
from prompt_tuning.storage import trees
from prompt_tuning.training import data_state
from prompt_tuning.training import optimizers
from prompt_tuning.training import preemption
from prompt_tuning.training import run_record
from prompt_tuning.training.step import make_train_step
from prompt_tuning.training import summaries

DEFAULT_TRAINABLE = sites.DEFAULT_TRAINABLE


class TrainError(RuntimeError):
  """A run that cannot go on (NaN loss, ...); says what to change."""


def _agreed(value: int, what: str) -> int:
  """`value`, checked equal on every process (all raise together if not)."""
  if jax.process_count() == 1:
    return value
  values = np.asarray(multihost_utils.process_allgather(np.int64(value))).reshape(-1)
  if np.any(values != values[0]):
    raise TrainError(f"{what} differs between processes ({values.tolist()}): every process "
                     "must get the same configuration and see the same MODEL_DIR (use storage "
                     "all hosts share, e.g. gs://)")
  return value


def _try(fn):
  """None if fn() succeeds, else its error message (to be agreed on by all processes)."""
  try:
    fn()
    return None
  except run_lock.LockError as e:
    return str(e)


def _agreed_ok(error: Optional[str]) -> None:
  """Raises on every process when process 0 reported an error."""
  if jax.process_count() > 1:
    failed = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if failed and error is None:
      raise TrainError("process 0 could not take MODEL_DIR's lock (its error says why)")
  if error is not None:
    raise run_lock.LockError(error)


def _check_resume(model_dir: str, start_step: int, train_steps: int, record: dict) -> dict:
  """The record to write when resuming, or TrainError if the new configuration
  changes what the checkpoints mean. Nothing is written here."""
  if train_steps < start_step:
    raise TrainError(
        f"MODEL_DIR {model_dir} is already at step {start_step}, past TRAIN_STEPS="
        f"{train_steps}: nothing to train (raise TRAIN_STEPS to go on, or use another MODEL_DIR)")
  previous = _previous_record(model_dir)
  if previous is None:  # every version wrote one: the configuration cannot be checked
    raise TrainError(
        f"MODEL_DIR {model_dir} holds checkpoints (newest step {start_step}) but no "
        f"{run_json.FILENAME}: they cannot be checked against this configuration, so they "
        f"are not resumed blind; restore {run_json.FILENAME}, or use another MODEL_DIR")
  frozen = record.get("frozen_checkpoint")
  if frozen:
    try:
      run_json.check_frozen(previous, frozen["path"], frozen["sha256"])
    except run_json.RecordError as e:
      raise TrainError(str(e)) from None
  meaningful, harmless = run_record.changes(previous, record)
  if meaningful:
    shown = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in list(meaningful.items())[:6])
    more = f" and {len(meaningful) - 6} more" if len(meaningful) > 6 else ""
    raise TrainError(
        f"MODEL_DIR {model_dir} holds a run made with another configuration: {shown}{more}. "
        f"Resume with the recorded values ({os.path.join(model_dir, run_json.FILENAME)}), or "
        "start fresh with another MODEL_DIR")
  if harmless:
    logging.info("resuming with changed settings: %s", harmless)
  return run_record.resumed(previous, record, start_step, harmless)


def _previous_record(model_dir: str):
  """MODEL_DIR's run.json, None when absent; TrainError when damaged."""
  try:
    return run_json.read(model_dir)
  except run_json.RecordError as e:
    raise TrainError(str(e)) from None


def _check_settings(*, model_dir, train_steps, eval_batch_size, checkpoint_period,
                    keep_checkpoints, eval_period, log_period, random_seed, eval_split,
                    eval_decoding) -> None:
  """TrainError for a configured value that cannot work, before anything is read or written."""
  gin_utils.check_folder("MODEL_DIR", model_dir, TrainError)
  gin_utils.check_int("TRAIN_STEPS", train_steps, TrainError, minimum=0)
  gin_utils.check_int("train.eval_batch_size", eval_batch_size, TrainError,
                      none_means="for BATCH_SIZE")
  gin_utils.check_int("CHECKPOINT_PERIOD", checkpoint_period, TrainError)
  gin_utils.check_int("KEEP_CHECKPOINTS", keep_checkpoints, TrainError,
                      none_means="to keep every checkpoint")
  gin_utils.check_int("EVAL_PERIOD", eval_period, TrainError,
                      none_means="to train without evaluation")
  gin_utils.check_int("LOG_PERIOD", log_period, TrainError)
  gin_utils.check_int("RANDOM_SEED", random_seed, TrainError, minimum=None)
  gin_utils.check_choice("EVAL_DECODING", eval_decoding, seqio_eval.DECODINGS, TrainError)
  if not isinstance(eval_split, str) or not eval_split:
    raise TrainError(
        f"train.eval_split must be a split name such as 'validation', got {eval_split!r}")


def _restore(model_dir: str, mesh, trainable, opt_state, random_seed: int, data_shards: int):
  """(start_step, trainable, opt_state, directory, state): the newest intact
  checkpoint of MODEL_DIR read back (step 0, the inputs and None, None for a
  fresh run). Only reads: damaged newer checkpoints are set aside later, once
  the run owns MODEL_DIR."""
  start_step = _agreed(numpy_checkpoints.latest_intact_step(
      model_dir, warn=lambda _: None, move_aside=False) or 0, "the latest intact checkpoint step")
  if not start_step:
    return 0, trainable, opt_state, None, None
  directory = numpy_checkpoints.checkpoint_dir(model_dir, start_step)
  trainable = partitioning.replicate(
      mesh, numpy_checkpoints.load_params(directory, trees.flatten(trainable)))
  state = numpy_checkpoints.load_state(directory)
  if state is None:
    raise TrainError(f"{directory} has no {numpy_checkpoints.STATE_FILE}: it cannot be "
                     "resumed; use a fresh MODEL_DIR (or PROMPT_FILE to start from its prompt)")
  opt_state = optimizers.restore_state(opt_state, state["opt_state"], start_step)
  if int(state["random_seed"]) != random_seed:
    logging.warning("resuming with RANDOM_SEED %d, checkpoint used %d", random_seed,
                    int(state["random_seed"]))
  if int(state.get("data_shards", 1)) != data_shards:
    logging.warning("resuming with %d data-parallel shards, the checkpoint was made with %d: "
                    "the rest of the data stream differs from an uninterrupted run",
                    data_shards, int(state.get("data_shards", 1)))
  logging.info("Resuming from %s (step %d)", directory, start_step)
  return start_step, trainable, opt_state, directory, state


@dataclasses.dataclass(frozen=True)
class _Schedule:
  """Which steps log, save, evaluate, or end the process early."""
  train_steps: int
  log_period: int
  checkpoint_period: int
  eval_period: Optional[int]  # None: no evaluation
  stop_after_step: Optional[int]  # tests: end as a kill would

  def logs(self, done: int) -> bool:
    return done % self.log_period == 0 or done == self.train_steps

  def saves(self, done: int) -> bool:
    return done % self.checkpoint_period == 0 or done == self.train_steps

  def evaluates(self, done: int) -> bool:
    return bool(self.eval_period) and (done % self.eval_period == 0 or done == self.train_steps)

  def ends_early(self, done: int) -> bool:
    return self.stop_after_step is not None and done >= self.stop_after_step


class _Progress:
  """The progress line process 0 prints and the scalars it writes to
  TensorBoard (MODEL_DIR/train), every LOG_PERIOD steps; rate and ETA from
  clu's progress reporter (progress.Progress), told of every step."""

  def __init__(self, model_dir: str, train_steps: int, batch_size: int, start_step: int,
               log_period: int):
    chief = jax.process_index() == 0
    self.writer = summaries.writer(os.path.join(model_dir, "train")) if chief else None
    self._remote = file_utils.is_remote(model_dir)
    self._train_steps, self._batch_size = train_steps, batch_size
    self._report = progress_lib.Progress(train_steps, start=start_step, every_steps=log_period,
                                         metric_writer=self.writer)

  def tick(self, done: int) -> None:
    """A step that does not log."""
    self._report(done)

  def log(self, done: int, loss: float, metrics) -> None:
    """A step that logs (its loss checked): the line and the scalars."""
    self._report(done)
    steps_per_s = self._report.steps_per_sec
    host = {k: float(v) for k, v in jax.device_get(metrics).items() if k != "params_finite"}
    host["examples_per_second"] = steps_per_s * self._batch_size
    routing = " ".join(f"{k.split('/')[-1]} {v:.2f}" for k, v in host.items()
                       if k.startswith("routing/"))
    if self.writer is not None:
      self.writer.write_scalars(done, host)
      if self._remote:
        self.writer.flush()  # the event files reach the bucket every LOG_PERIOD steps
      lr = f" lr {host['learning_rate']:g}" if "learning_rate" in host else ""
      print(f"step {done}/{self._train_steps} loss {loss:.4f}{lr} "
            f"steps/s {steps_per_s:.2f} examples/s {steps_per_s * self._batch_size:.1f} "
            f"ETA {progress_lib.format_eta(self._report.eta_seconds)}"
            + (f" routing {routing}" if routing else ""), flush=True)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


@dataclasses.dataclass
class _Checkpointer:
  """Writes numpy checkpoints: the prompt, optimizer state and every
  process's data position, in one folder that process 0 checksums and
  renames into place; all processes wait for it (multi-host)."""
  model_dir: str
  keep_checkpoints: Optional[int]
  lock: Optional[run_lock.RunLock]  # process 0's
  batch_size: int
  random_seed: int
  data_shards: int
  data_layout: str  # data_state.layout_key

  def save(self, step: int, trainable, opt_state, iterator) -> None:
    if self.lock is not None and self.lock.lost:
      raise TrainError(f"{self.lock.path} was taken over by another run: stopped at step "
                       f"{step} without writing")
    chief = jax.process_index() == 0
    # Replicated values: every process holds them, so every process can take part.
    state = {"opt_state": flax.serialization.to_state_dict(jax.device_get(opt_state)),
             "step": step, "random_seed": self.random_seed,
             "examples_seen": step * self.batch_size, "data_shards": self.data_shards,
             "data_layout": self.data_layout}
    params = jax.device_get(trainable)
    # This process's data position (None at step 0, or for a pipeline that
    # cannot be checkpointed: a resume then replays).
    files = iterator.state_files(data_state.prefix(jax.process_index(), jax.process_count())
                                 ) if iterator is not None else None
    tmp = None
    if jax.process_count() > 1:
      # Every process writes its data state into the temporary folder that
      # process 0 made, before process 0 checksums and renames it.
      if chief:
        tmp = numpy_checkpoints.begin_shared(self.model_dir, step)
      multihost_utils.sync_global_devices(f"checkpoint_{step}_folder")
      if not chief and files:
        numpy_checkpoints.write_files(numpy_checkpoints.shared_temp_dir(self.model_dir, step),
                                      files)
      multihost_utils.sync_global_devices(f"checkpoint_{step}_data")
    if chief:
      numpy_checkpoints.save(self.model_dir, step, params, state, extra_files=files, tmp=tmp)
      numpy_checkpoints.cleanup(self.model_dir, self.keep_checkpoints)
      logging.info("Saved %s", numpy_checkpoints.checkpoint_dir(self.model_dir, step))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint_{step}")


def _checked_loss(done: int, metrics, model_dir: str) -> float:
  """Step `done`'s loss (waiting for the step); TrainError if it diverged."""
  loss = float(metrics["loss"])
  if not np.isfinite(loss) or not bool(metrics["params_finite"]):
    what = f"loss is {loss}" if not np.isfinite(loss) else "the updated prompt is not finite"
    raise TrainError(
        f"{what} at step {done}: the prompt diverged (try a lower learning rate, "
        f"e.g. --gin.adafactor.learning_rate=0.03); checkpoints up to step "
        f"{numpy_checkpoints.latest_step(model_dir)} are intact")
  return loss


def _loop(*, step_fn, trainable, opt_state, frozen, step_rng, iterator, mesh, start_step: int,
          schedule: _Schedule, progress: _Progress, checkpointer: _Checkpointer, evaluate,
          what: str):
  """Runs the steps from `start_step` on; returns the trainable parameters.

  JAX dispatches a step and returns at once. A step's loss is checked only
  after the next step is dispatched, so that the host reads, cuts and sends
  the next batch while the device still runs this one (as T5X, which does not
  wait for every step); a step that logs, saves, evaluates or stops is checked
  first, so nothing is written or reported from a diverged step, and the data
  iterator is never ahead of the step saved. SIGTERM (preemption) saves and
  stops after the step under way.
  """
  model_dir = checkpointer.model_dir
  pending = None  # (step, metrics) dispatched and not yet checked
  with preemption.Watcher() as preempted:
    for step in range(start_step, schedule.train_steps):
      try:
        batch = next(iterator)
      except StopIteration:
        if pending is not None:
          _checked_loss(*pending, model_dir)
        raise TrainError(f"{what} ran out at step {step}") from None
      # Cut to its bucket lengths (PADDING; all processes agree on them).
      batch = data.fit_batch(batch)
      trainable, opt_state, metrics = step_fn(trainable, opt_state, frozen,
                                              partitioning.shard_batch(mesh, batch),
                                              jnp.int32(step), step_rng)
      done = step + 1
      if pending is not None:
        _checked_loss(*pending, model_dir)
      pending = (done, metrics)
      logs, saves, evals = schedule.logs(done), schedule.saves(done), schedule.evaluates(done)
      stop = done < schedule.train_steps and preempted(done)
      last = schedule.ends_early(done)
      if not (logs or saves or evals or stop or last):
        progress.tick(done)
        continue
      loss, pending = _checked_loss(*pending, model_dir), None
      if logs:
        progress.log(done, loss, metrics)
      else:
        progress.tick(done)
      if saves:
        checkpointer.save(done, trainable, opt_state, iterator)
      if evals:
        evaluate(done, trainable)
      if stop:
        if not saves:
          checkpointer.save(done, trainable, opt_state, iterator)
        raise preemption.Preempted(
            f"stopped by SIGTERM after step {done} of {schedule.train_steps}: "
            f"{numpy_checkpoints.checkpoint_dir(model_dir, done)} is written; rerun the same "
            "command to resume")
      if last:
        break
  return trainable


@gin.configurable(module="trainer")
def train(*,
          data_config: Optional[data.DataConfig] = None,
          model_dir: str = gin.REQUIRED,
          model=gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          initial_checkpoint_path: Optional[str] = None,
          optimizer_fn=gin.REQUIRED,
          trainable_params: Sequence[str] = DEFAULT_TRAINABLE,
          checkpoint_period: int = 1000,
          keep_checkpoints: Optional[int] = None,
          eval_period: Optional[int] = 1000,
          eval_split: str = "validation",
          eval_batch_size: Optional[int] = None,
          random_seed: int = 0,
          log_period: int = 100,
          shuffle: bool = True,
          mesh_fn=partitioning.make_mesh,
          eval_decoding: str = "auto",
          stop_after_step: Optional[int] = None,
          **legacy):
  """Trains the prompt; returns the final trainable parameters (numpy tree).

  `data_config`: the task, lengths, batch size and data sources (runs/data.gin);
  `legacy`: the same values bound on `train` itself, by configs written
  before DataConfig (data.config.resolve). `stop_after_step` ends the process
  early (as a kill would), for tests.
  """
  data_config = data.config.resolve(data_config, legacy, "train", TrainError)
  mixture_or_task_name = data_config.mixture_or_task_name
  batch_size = data_config.batch_size
  use_cached_tasks = data_config.use_cached_tasks
  _check_settings(model_dir=model_dir, train_steps=train_steps,
                  eval_batch_size=eval_batch_size, checkpoint_period=checkpoint_period,
                  keep_checkpoints=keep_checkpoints, eval_period=eval_period,
                  log_period=log_period, random_seed=random_seed, eval_split=eval_split,
                  eval_decoding=eval_decoding)
  gin_utils.check_patterns("TRAINABLE_PARAMS", trainable_params, TrainError)
  optimizer = optimizer_fn()  # checks its settings (a learning rate > 0) before any reading
  lengths = data_config.prepare(TrainError)  # checks BATCH_SIZE and TASK_FEATURE_LENGTHS too
  if eval_period:
    seqio_eval.check_split(mixture_or_task_name, eval_split, setting="train.eval_split",
                           error=TrainError, hint=(
                               "set --gin.train.eval_split to one of them, or "
                               "--gin.EVAL_PERIOD=None to train without evaluation"))
  random_seed = _agreed(random_seed, "RANDOM_SEED")
  mesh = mesh_fn()
  layout = partitioning.data_layout(mesh)
  train_ds = data.get_dataset(mixture_or_task_name, lengths, "train", batch_size,
                              shuffle=shuffle, seed=random_seed, use_cached=use_cached_tasks,
                              layout=layout)
  what = f"the train split of {mixture_or_task_name!r}"
  example = data.first_batch(train_ds, what)
  shapes_batch = {k: jnp.asarray(v[:1]) for k, v in example.items()}

  # Frozen model: validated against the checkpoint before anything is written.
  rng = jax.random.PRNGKey(random_seed)
  init_rng, step_rng = jax.random.split(rng)
  if initial_checkpoint_path:
    frozen = weights.load_frozen(model, initial_checkpoint_path, shapes_batch,
                                      trainable_params, mesh)
  else:
    logging.warning("INITIAL_CHECKPOINT_PATH is not set: the frozen model is RANDOM")
    frozen = weights.init_random_frozen(model, jax.random.PRNGKey(random_seed + 1),
                                             shapes_batch, trainable_params, mesh)
  trainable = weights.init_trainable(model, init_rng, shapes_batch, trainable_params, mesh)
  if not trees.flatten(trainable):
    raise TrainError(f"no parameter matches the trainable patterns {list(trainable_params)}")
  counts = methods.describe_counts(trainable, frozen)
  logging.info(counts)
  if jax.process_index() == 0:
    print(counts, flush=True)
  opt_state = optimizer.init(trainable)

  # The newest checkpoint that verifies (checksums): read only here, before the
  # run owns MODEL_DIR; damaged newer ones are set aside once it does (below).
  start_step, trainable, opt_state, resume_dir, resume_state = _restore(
      model_dir, mesh, trainable, opt_state, random_seed, layout.num_shards)
  # Placed as the step's outputs will be, so the step compiles once, not twice.
  opt_state = partitioning.replicate(mesh, opt_state)

  _previous_record(model_dir)  # a damaged run.json is refused, never overwritten
  frozen_print = None
  if initial_checkpoint_path:  # read just above: this re-reads one small file
    frozen_print = {"path": initial_checkpoint_path,
                    "sha256": t5x_checkpoints.fingerprint(initial_checkpoint_path)}
  record = run_record.build(
      mixture_or_task_name=mixture_or_task_name, train_steps=train_steps,
      batch_size=batch_size, random_seed=random_seed, data_shards=layout.num_shards,
      frozen_checkpoint=frozen_print)
  if start_step:
    record = _check_resume(model_dir, start_step, train_steps, record)
    if start_step == train_steps:
      if jax.process_index() == 0:
        print(f"MODEL_DIR {model_dir} already holds this run finished (step {start_step} of "
              f"{train_steps}): nothing to do (raise TRAIN_STEPS to train on)", flush=True)
      return jax.device_get(trainable)

  # The evaluation data is read (and checked) now, before anything is written.
  evaluator = None
  eval_dir = os.path.join(model_dir, "inference_eval")
  if eval_period and train_steps > start_step:
    evaluator = seqio_eval.make_evaluator(
        model, mixture_or_task_name, lengths, eval_split, eval_dir,
        eval_batch_size or batch_size, use_cached_tasks, mesh, make_log_dir=False)

  # Inputs are valid: from here on MODEL_DIR is written (atomically), by process 0,
  # which owns it for the run (run_lock).
  chief = jax.process_index() == 0
  lock = None
  try:
    if chief:
      file_utils.makedirs(model_dir)
      lock = run_lock.RunLock(model_dir)
    _agreed_ok(_try(lock.acquire) if chief else None)
    if chief:
      # Warns about and renames each damaged checkpoint newer than start_step
      # (damaged_checkpoint_N, kept for inspection), so it is never resumed from.
      numpy_checkpoints.latest_intact_step(model_dir)
      gin_utils.write_operative_config(model_dir)
      run_record.write(model_dir, record)
      if evaluator is not None:
        file_utils.makedirs(eval_dir)
    layout_key = data_state.layout_key(mesh)
    checkpointer = _Checkpointer(model_dir, keep_checkpoints, lock, batch_size, random_seed,
                                 layout.num_shards, layout_key)
    if start_step == 0:
      checkpointer.save(0, trainable, opt_state, None)  # the initial prompt, before any data

    step_fn = jax.jit(make_train_step(model, optimizer), donate_argnums=(0, 1))
    iterator, ready = data_state.resume(
        train_ds, start_step, resume_dir, (resume_state or {}).get("data_layout"), layout_key,
        batch_size)
    if ready < start_step:
      raise TrainError(f"{what} ran out at step {ready}")

    progress = _Progress(model_dir, train_steps, batch_size, start_step, log_period)
    if progress.writer is not None and start_step == 0:
      summaries.write_config(progress.writer, 0, record["macros"])

    def evaluate(done, trainable):
      seqio_eval.run(evaluator, model, trees.merge(trainable, frozen), done,
                     eval_batch_size or batch_size, mesh, decoding=eval_decoding)

    t0 = time.time()
    trainable = _loop(
        step_fn=step_fn, trainable=trainable, opt_state=opt_state, frozen=frozen,
        step_rng=step_rng, iterator=iterator, mesh=mesh, start_step=start_step,
        schedule=_Schedule(train_steps, log_period, checkpoint_period,
                           eval_period if evaluator is not None else None, stop_after_step),
        progress=progress, checkpointer=checkpointer, evaluate=evaluate, what=what)
    progress.close()
    if jax.process_index() == 0:
      last = numpy_checkpoints.checkpoint_dir(model_dir, numpy_checkpoints.latest_step(model_dir))
      print(f"Training finished in {time.time() - t0:.1f}s: {last}", flush=True)
  except file_utils.DiskFullError as e:
    latest = numpy_checkpoints.latest_step(model_dir)
    kept = ("no checkpoint was written" if latest is None else
            f"the checkpoints up to step {latest} are intact")
    raise file_utils.DiskFullError(
        f"{e}; {kept}: free some space and rerun the same command to resume") from None
  finally:
    if lock is not None:
      lock.release()
  return jax.device_get(trainable)
