"""pt-infer's library and job: many tasks' prompts on one frozen model, each
example with its own task's prompt, examples of different tasks in the same
batches (the command and what it does: prompt_tuning/infer.py).

`infer` (gin: `infer.infer`, as runs/prompt_infer.gin binds it) is the job;
`Predictor` the batched, jitted prediction; `load_prompts` reads and checks
each task's prompt; `OutputWriter` streams the predictions in input order and
resumes a run that stopped.
"""
import dataclasses
import json
import os
import time
from typing import Mapping, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from prompt_tuning import data
from prompt_tuning.evaluation import seqio_eval
from prompt_tuning.evaluation import trained
from prompt_tuning import gin_utils
from prompt_tuning.methods import initializers
from prompt_tuning.methods import multiprompt
from prompt_tuning.methods import prompts
from prompt_tuning.methods import sites
from prompt_tuning.model import partitioning
from prompt_tuning.model import weights
from prompt_tuning import progress
from prompt_tuning.storage import file_utils
from prompt_tuning.storage import numpy_checkpoints
from prompt_tuning.storage import t5x_checkpoints
from prompt_tuning.storage import trees

PROMPT = "encoder/prompt/prompt"
PROMPT_MASK = "encoder/prompt/mask"
DECODINGS = ("auto", "rank", "greedy")


def parse_prompts(specs: Sequence[str], tasks=()) -> dict:
  """--prompts values -> {task: path}, one clear error for a bad entry.

  Each value is TASK=PATH or several joined by commas. A comma followed by
  text that does not start with a name of `tasks` (the registered tasks)
  and '=' belongs to the path (sweep folders such as
  `PROMPT_LENGTH=10,RANDOM_SEED=0` have commas).
  """
  entries = []
  for spec in specs:
    for part in spec.split(","):
      if entries and tasks and part.partition("=")[0].strip() not in tasks:
        entries[-1] += "," + part
      else:
        entries.append(part)
  out = {}
  for entry in entries:
    task, sep, path = entry.partition("=")
    task, path = task.strip(), path.strip()
    if not sep or not task or not path:
      raise initializers.PromptInitError(
          f"--prompts entry {entry!r} is not TASK=PATH (e.g. --prompts=rte=/p/rte.npy,"
          "cb=/p/cb.npy)")
    if task in out:
      raise initializers.PromptInitError(f"--prompts names task {task!r} twice")
    out[task] = path
  if not out:
    raise initializers.PromptInitError("no prompts: give --prompts=TASK=PATH,... (one per task)")
  return out


def _task(name: str, where: str) -> seqio.Task:
  task = data.get_task(name) if name in seqio.TaskRegistry.names() else None
  if task is None:
    if name in seqio.MixtureRegistry.names():
      raise data.DataError(f"{where}: {name!r} is a mixture: name one of its tasks")
    raise data.DataError(
        f"{where}: unknown task {name!r}: register it in a module and name that module with "
        "--gin.MIXTURE_OR_TASK_MODULE")
  return task


def read_examples(path: str, known_tasks) -> list:
  """The input lines as dicts, checked; errors name the line."""
  if not file_utils.exists(path):
    raise data.DataError(f"--input {path} does not exist")
  examples = []
  # JSONL: lines end at "\n" only (str.splitlines would also split at U+2028,
  # which JSON strings may hold raw); each line must be UTF-8, never guessed.
  for number, raw in enumerate(file_utils.read_bytes(path).split(b"\n"), 1):
    where = f"{path} line {number}"
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise data.DataError(f"{where}: not UTF-8 (byte {e.start + 1} of the line); save the "
                           "file as UTF-8") from None
    if not line.strip():
      continue
    try:
      example = json.loads(line)
    except json.JSONDecodeError as e:
      raise data.DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(example, dict):
      raise data.DataError(f"{where}: expected a JSON object with \"task\" and \"inputs\"")
    for key in ("task", "inputs"):
      if not isinstance(example.get(key), str):
        raise data.DataError(f"{where}: \"{key}\" must be a string, got "
                             f"{json.dumps(example.get(key))}")
    if example["task"] not in known_tasks:
      _task(example["task"], where)  # unknown task or mixture: its own message
      raise data.DataError(
          f"{where}: no prompt for task {example['task']!r}: add it to --prompts (given: "
          f"{', '.join(sorted(known_tasks))})")
    examples.append(example)
  if not examples:
    raise data.DataError(f"--input {path} holds no examples")
  return examples


def encode_inputs(task: seqio.Task, text: str, length: int) -> list:
  """Token ids of a model input as the task's pipeline makes them (tokenize,
  then append_eos_after_trim to `length`)."""
  feature = task.output_features["inputs"]
  ids = list(feature.vocabulary.encode(text))
  if feature.add_eos:
    return ids[:length - 1] + [feature.vocabulary.eos_id]
  return ids[:length]


def _prompt_shape(path: str):
  """The shape of a plain prompt's [P, d] array in a .npy or checkpoint folder
  (None when it cannot be read: loading reports why)."""
  if not path.endswith(".npy"):
    path = f"{path.rstrip('/')}/{numpy_checkpoints.param_filename(PROMPT)}"
  try:
    return tuple(file_utils.load_npy(path).shape) if file_utils.exists(path) else None
  except (ValueError, OSError):
    return None


def load_prompts(model, abstract_trainable, prompt_files: Mapping[str, str]):
  """(model for inference, {task: trainable tree}) with every prompt checked.

  Plain prompts (prompts.Prompt) may have any length: the inference model's
  prompt is a prompts.PaddedPrompt of the longest, each task's left-padded
  with a mask. Other prompt modules (SMoP) need the model's exact shapes.
  """
  shapes = trees.shapes(abstract_trainable)
  plain = isinstance(model.module.prompt, prompts.Prompt) and PROMPT in shapes
  loaded = {}
  for task, path in prompt_files.items():
    abstract = abstract_trainable
    if plain:
      shape = _prompt_shape(path)
      if shape is not None and len(shape) == 2 and shape[1] == shapes[PROMPT][1]:
        abstract = trees.unflatten({**{n: jax.ShapeDtypeStruct(s, jnp.float32)
                                             for n, s in shapes.items()},
                                          PROMPT: jax.ShapeDtypeStruct(shape, jnp.float32)})
    try:
      loaded[task] = trees.flatten(trained.load_trainable(abstract, path, None)[0])
    except (initializers.PromptInitError, t5x_checkpoints.CheckpointError) as e:
      message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      joined = [p.partition("=")[0] for p in path.split(",")[1:] if "=" in p]
      if joined:  # see parse_prompts
        message += (f" (read as one path: no registered task is called "
                    f"{' or '.join(map(repr, joined))})")
      raise initializers.PromptInitError(f"--prompts {task}={path}: {message}") from None
  if not plain:
    return model, {task: trees.unflatten(flat) for task, flat in loaded.items()}
  length = max(flat[PROMPT].shape[0] for flat in loaded.values())
  padded = {}
  for task, flat in loaded.items():
    prompt = np.asarray(flat[PROMPT], np.float32)
    pad = length - prompt.shape[0]
    padded[task] = trees.unflatten({
        **flat, PROMPT: np.concatenate([np.zeros((pad, prompt.shape[1]), np.float32), prompt]),
        PROMPT_MASK: np.concatenate([np.zeros(pad, np.float32),
                                     np.ones(prompt.shape[0], np.float32)])})
  module = model.module.clone(prompt=prompts.PaddedPrompt(length=length))
  return dataclasses.replace(model, module=module), padded


def _batch_fn(model, decode_length):
  """The jitted step: per-example prompts, greedy and rank rows together."""
  def fn(table, frozen, tokens, task_index, real, label_table, label_valid, is_rank):
    rows = multiprompt.gather_rows(table, task_index)
    rank_rows = jnp.take(is_rank, task_index) & real

    def encode(params, tokens):
      return multiprompt.encode(model, params, tokens)[:2]

    encoded, mask = multiprompt.per_example(encode, rows, frozen, tokens)
    greedy = lambda params, e, m, done: model.greedy_decode(params, e, m, decode_length, done)
    out, score = multiprompt.per_example(greedy, rows, frozen, encoded, mask, ~(real & ~rank_rows))
    labels = jnp.take(label_table, task_index, axis=0)  # [b, K, T]

    def rank():
      lls = lambda params, e, m, l: multiprompt.label_log_likelihoods(model, params, e, m, l)
      return multiprompt.per_example(lls, rows, frozen, encoded, mask, labels)

    scores = jax.lax.cond(jnp.any(rank_rows), rank,
                          lambda: jnp.zeros(labels.shape[:2], jnp.float32))
    scores = jnp.where(jnp.take(label_valid, task_index, axis=0), scores, -jnp.inf)
    return {"tokens": out, "score": score, "label_scores": scores}
  return fn


class Predictor:
  """Predictions for examples of many tasks on one frozen model, each example
  with its task's prompt, examples of different tasks batched together."""

  def __init__(self, model, frozen, task_params: Mapping[str, object], lengths, batch_size,
               mesh, decoding="auto"):
    if decoding not in DECODINGS:
      raise gin_utils.ConfigError(f"EVAL_DECODING must be one of {DECODINGS} for pt-infer, got "
                                  f"{decoding!r}")
    self.tasks = list(task_params)
    self.model, self.frozen, self.lengths = model, frozen, dict(lengths)
    self.batch_size, self.mesh = batch_size, mesh
    self.layout = partitioning.data_layout(mesh)
    problem = self.layout.batch_problem(batch_size)
    if problem:
      raise data.DataError(problem)
    self.table = partitioning.replicate(
        mesh, multiprompt.stack_trees([jax.device_get(task_params[t]) for t in self.tasks]))
    self.labels = {}
    if decoding != "greedy":
      from prompt_tuning.tasks import labels  # pylint: disable=g-import-not-at-top
      for name in self.tasks:
        found = labels.get_class_labels(name)
        if found:
          vocabulary = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
          self.labels[name] = (list(found), seqio_eval.label_token_ids(vocabulary, found))
    k = max([ids.shape[0] for _, ids in self.labels.values()] + [1])
    t = max([ids.shape[1] for _, ids in self.labels.values()] + [1])
    self.label_table = np.zeros((len(self.tasks), k, t), np.int32)
    self.label_valid = np.zeros((len(self.tasks), k), bool)
    for i, name in enumerate(self.tasks):
      if name in self.labels:
        ids = self.labels[name][1]
        self.label_table[i, :ids.shape[0], :ids.shape[1]] = ids
        self.label_valid[i, :ids.shape[0]] = True
    self.is_rank = np.asarray([name in self.labels for name in self.tasks])
    self._fn = jax.jit(_batch_fn(model, self.lengths["targets"]))

  def _local(self, x):
    """This process's rows of a global batch (its data shards)."""
    per = self.batch_size // self.layout.num_shards
    return x[self.layout.shards[0] * per:(self.layout.shards[-1] + 1) * per]

  def batches(self, examples: Sequence[Mapping], start: int = 0) -> list:
    """Positions of the examples from `start` on in each batch. Two streams
    in input order, the tasks decoded greedily and the tasks ranked, so each
    batch runs one of the two (tasks of one kind share batches); the next
    batch is always the stream's whose next example comes first, so the
    outputs complete in about input order (and can be written as they do)."""
    streams = []
    for ranked in (False, True):
      stream = [i for i, e in enumerate(examples)
                if i >= start and (e["task"] in self.labels) == ranked]
      streams.append([stream[k:k + self.batch_size]
                      for k in range(0, len(stream), self.batch_size)])
    out = []
    while any(streams):
      first = min((s for s in streams if s), key=lambda s: s[0][0])
      out.append(first.pop(0))
    return out

  def predict(self, examples: Sequence[Mapping], start: int = 0, on_batch=None) -> list:
    """One output dict per example ({'task', 'inputs', ...}), in order; the
    examples before `start` are skipped (None). `on_batch({position:
    output})` is called after every batch."""
    index_of = {name: i for i, name in enumerate(self.tasks)}
    tasks = {name: seqio.get_mixture_or_task(name) for name in self.tasks}
    outputs = [None] * len(examples)
    for positions in self.batches(examples, start):
      tokens = np.zeros((self.batch_size, self.lengths["inputs"]), np.int32)
      task_index = np.zeros((self.batch_size,), np.int32)
      real = np.zeros((self.batch_size,), bool)
      for row, i in enumerate(positions):
        task = examples[i]["task"]
        ids = encode_inputs(tasks[task], examples[i]["inputs"], self.lengths["inputs"])
        tokens[row, :len(ids)] = ids
        task_index[row], real[row] = index_of[task], True
      # Cut to its bucket length (PADDING); every process builds the same
      # global batch, so they agree without talking.
      tokens = data.fit_batch({"encoder_input_tokens": tokens},
                              multihost=False)["encoder_input_tokens"]
      batch = partitioning.shard_batch(self.mesh, {k: self._local(v) for k, v in (
          ("tokens", tokens), ("task_index", task_index), ("real", real))})
      result = self._fn(self.table, self.frozen, batch["tokens"], batch["task_index"],
                        batch["real"], self.label_table, self.label_valid, self.is_rank)
      result = jax.tree_util.tree_map(partitioning.gather, result)
      for row, i in enumerate(positions):
        outputs[i] = self._output(examples[i], tasks[examples[i]["task"]],
                                  {k: v[row] for k, v in result.items()})
      if on_batch is not None:
        on_batch({i: outputs[i] for i in positions})
    return outputs

  def _output(self, example, task, result):
    out = dict(example)
    if example["task"] in self.labels:
      strings, _ = self.labels[example["task"]]
      scores = [float(s) for s in result["label_scores"][:len(strings)]]
      best = int(np.argmax(scores))
      out.update(prediction=strings[best], score=scores[best],
                 label_scores=dict(zip(strings, scores)))
    else:
      out.update(prediction=task.output_features["targets"].vocabulary.decode(
          result["tokens"].tolist()), score=float(result["score"]))
    return out


@gin.configurable(module="infer")
def infer(input_path: str,
          output_path: Optional[str],
          prompt_files,
          *,
          data_config: Optional[data.DataConfig] = None,
          model=gin.REQUIRED,
          checkpoint_path: Optional[str] = None,
          initial_checkpoint_path: Optional[str] = None,
          trainable_params: Sequence[str] = sites.DEFAULT_TRAINABLE,
          mesh_fn=partitioning.make_mesh,
          decoding: str = "auto",
          **legacy) -> list:
  """Predicts every example of `input_path`, writes `output_path` (process 0)
  and returns the output dicts. `prompt_files`: {task: path}, or --prompts
  values (parse_prompts). `data_config` (its task name unused: each example
  names its task) and `legacy` as in trainer.train."""
  if decoding not in DECODINGS:
    raise gin_utils.ConfigError(f"EVAL_DECODING must be one of {DECODINGS} for pt-infer, got "
                                f"{decoding!r}")
  data_config = data.config.resolve(data_config, legacy, "infer", gin_utils.ConfigError)
  batch_size = data_config.batch_size
  lengths = data_config.prepare(gin_utils.ConfigError, need_task=False)
  if not isinstance(prompt_files, Mapping):
    prompt_files = parse_prompts(prompt_files, set(seqio.TaskRegistry.names()))
  for task in prompt_files:
    _task(task, f"--prompts {task}={prompt_files[task]}")
  examples = read_examples(input_path, set(prompt_files))
  frozen_path = checkpoint_path or initial_checkpoint_path
  if not frozen_path:
    raise initializers.PromptInitError(
        "no frozen model: set CHECKPOINT_PATH (or INITIAL_CHECKPOINT_PATH) to a T5X checkpoint")
  mesh = mesh_fn()
  batch = weights.dummy_batch(1, lengths["inputs"], lengths["targets"])
  abstract_trainable = weights.abstract_trainable(model, trainable_params, batch)
  chief = jax.process_index() == 0
  # What --output holds is checked now, before anything is loaded or written.
  writer = OutputWriter(output_path, examples) if output_path and chief else None
  infer_model, task_params = load_prompts(model, abstract_trainable, prompt_files)
  frozen = weights.load_frozen(model, frozen_path, batch, trainable_params, mesh)
  predictor = Predictor(infer_model, frozen, task_params, lengths, batch_size, mesh, decoding)
  start = _agreed_start(writer.start if writer is not None else 0)
  if start == len(examples):
    if chief:
      print(f"pt-infer: {output_path} already holds the predictions of all {len(examples)} "
            "examples: nothing to do (delete it to predict again)", flush=True)
    return writer.read_all() if writer is not None else []
  if start and chief:
    print(f"pt-infer: resuming after the {start} predictions {output_path} holds", flush=True)
  done = progress.counter("pt-infer", f"{len(examples)} examples of "
                          f"{len({e['task'] for e in examples})} tasks", len(examples) - start,
                          "examples", enabled=chief)
  finished = [0]

  def on_batch(outputs):
    if writer is not None:
      writer.add(outputs)
    finished[0] += len(outputs)
    done(finished[0])

  began = time.time()
  outputs = predictor.predict(examples, start, on_batch)
  seconds = time.time() - began
  if writer is not None:
    writer.close()
    outputs = writer.read_all()
  if chief:
    counts = {}
    for example in examples:
      counts[example["task"]] = counts.get(example["task"], 0) + 1
    print(f"pt-infer: {len(examples)} examples of {len(counts)} tasks ("
          + ", ".join(f"{t} {n}" for t, n in sorted(counts.items())) + f") in "
          f"{len(predictor.batches(examples))} batch(es), {seconds:.1f}s with compilation, "
          f"{(len(examples) - start) / max(seconds, 1e-9):.1f} examples/s"
          + (f" -> {output_path}" if output_path else ""), flush=True)
  return outputs


def _agreed_start(start: int) -> int:
  """Process 0's resume position, on every process (they build the same batches)."""
  if jax.process_count() == 1:
    return start
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(multihost_utils.broadcast_one_to_all(np.int64(start)))


class OutputWriter:
  """--output written as the predictions come: each output line as soon as
  every line before it is there (in input order), flushed to disk after
  each batch, so a killed run keeps every line it wrote.

  A rerun with the same --output resumes: the lines already there are kept
  when they are the outputs of the same inputs (each line holds its input
  line's keys and values), a line cut short by the kill is dropped, and
  prediction starts after them. Lines of other inputs are an error: the file
  is never overwritten. (On gs://, which cannot append, the whole file is
  written again at most every 30 s and at the end.)
  """

  def __init__(self, path: str, examples: Sequence[Mapping]):
    self.path, self.examples = path, examples
    self._pending = {}
    self._kept = self._existing()
    self.start = len(self._kept)
    self._next = self.start
    self._remote = file_utils.is_remote(path)
    self._last_write = 0.0
    self._opened = False

  def _open(self):
    """Before the first write (a bad input found later writes nothing): the
    folder, and the file cut after its last complete line."""
    self._opened = True
    if self._remote:
      return
    file_utils.makedirs(os.path.dirname(os.path.abspath(self.path)))
    with open(self.path, "ab") as f:
      f.truncate(sum(len(line) for line in self._kept))

  def _existing(self) -> list:
    """The complete output lines already in the file (bytes, with newline)."""
    problem = file_utils.file_problem(self.path)
    if problem:
      raise data.DataError(f"--output {problem}: give a file path")
    if not file_utils.exists(self.path):
      return []
    kept = []
    for number, line in enumerate(file_utils.read_bytes(self.path).split(b"\n")[:-1], 1):
      where = f"--output {self.path} line {number}"
      try:
        out = json.loads(line.decode("utf-8"))
      except (UnicodeDecodeError, json.JSONDecodeError):
        raise data.DataError(f"{where} is not an output of pt-infer: use another --output, "
                             "or delete it") from None
      if number > len(self.examples) or not isinstance(out, dict) or any(
          out.get(k) != v for k, v in self.examples[number - 1].items()):
        raise data.DataError(f"{where} is not the output of input line {number}: --output holds "
                             "the predictions of other inputs; use another --output, or delete "
                             "it to predict again")
      kept.append(line + b"\n")
    return kept

  def add(self, outputs: Mapping[int, dict]) -> None:
    self._pending.update(outputs)
    ready = []
    while self._next in self._pending:
      ready.append((json.dumps(self._pending.pop(self._next)) + "\n").encode("utf-8"))
      self._next += 1
    if not ready:
      return
    if not self._opened:
      self._open()
    if self._remote:
      self._kept.extend(ready)
      if time.time() - self._last_write > 30:
        self._rewrite()
      return
    with open(self.path, "ab") as f:
      f.write(b"".join(ready))
      f.flush()
      os.fsync(f.fileno())

  def _rewrite(self):
    file_utils.write_bytes_atomic(self.path, b"".join(self._kept))
    self._last_write = time.time()

  def close(self) -> None:
    if self._pending:
      raise RuntimeError(f"pt-infer: predictions of lines {sorted(self._pending)[:3]}... were "
                         "never written")
    if self._remote:
      self._rewrite()

  def read_all(self) -> list:
    return [json.loads(line) for line in
            file_utils.read_bytes(self.path).decode("utf-8").split("\n") if line.strip()]
