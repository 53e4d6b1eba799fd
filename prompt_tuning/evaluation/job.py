"""pt-eval's job, `evaluate` (gin: `evaluation.evaluate`, as runs/prompt_eval.gin
binds it): checks every setting, loads the frozen model and the trained
parameters (trained.load_trainable) and runs seqio's Evaluator
(seqio_eval.run), or an ensemble of prompts (ensemble.run) with PROMPT_FILES.
The command itself is prompt_tuning/eval.py.
"""
import os
from typing import Optional, Sequence

import gin
import jax

from prompt_tuning import data
from prompt_tuning.evaluation import seqio_eval
from prompt_tuning.evaluation import trained
from prompt_tuning import gin_utils
from prompt_tuning.evaluation.seqio_eval import DECODINGS, EvalError
from prompt_tuning.methods import initializers
from prompt_tuning.methods.sites import DEFAULT_TRAINABLE
from prompt_tuning.model import partitioning
from prompt_tuning.model import weights
from prompt_tuning.storage import file_utils
from prompt_tuning.storage import run_json
from prompt_tuning.storage import run_lock
from prompt_tuning.storage import t5x_checkpoints
from prompt_tuning.storage import trees


def _check_not_live(model_dir: str) -> None:
  """EvalError when a running pt-train owns MODEL_DIR: its inference_eval/
  is the run's own (evaluating a live run must not touch what it writes)."""
  try:
    holder = run_lock.RunLock(model_dir).live_holder()
  except run_lock.LockError as e:
    raise EvalError(str(e)) from None
  if holder is not None:
    raise EvalError(
        f"MODEL_DIR {model_dir} belongs to a running pt-train ({run_lock.describe(holder)}), "
        "which writes its own inference_eval/: set EVAL_OUTPUT_DIR to evaluate it elsewhere")


def _check_frozen_of_run(model_dir: str, frozen_path: str) -> None:
  """EvalError when the run recorded this frozen checkpoint path with another
  sha256 (it changed since the run started). Another path is allowed: a
  prompt may be evaluated on another model on purpose."""
  try:
    record = run_json.read(model_dir)
    recorded = (record or {}).get("frozen_checkpoint") or {}
    if recorded.get("path") == frozen_path:
      run_json.check_frozen(record, frozen_path, t5x_checkpoints.fingerprint(frozen_path))
  except run_json.RecordError as e:
    raise EvalError(str(e)) from None


@gin.configurable(module="evaluation")
def evaluate(*,
             data_config: Optional[data.DataConfig] = None,
             model=gin.REQUIRED,
             checkpoint_path: Optional[str] = None,
             initial_checkpoint_path: Optional[str] = None,
             prompt_file: Optional[str] = None,
             model_dir: Optional[str] = None,
             eval_output_dir: Optional[str] = None,
             split: str = "validation",
             trainable_params: Sequence[str] = DEFAULT_TRAINABLE,
             mesh_fn=partitioning.make_mesh,
             decoding: str = "auto",
             prompt_files: Optional[Sequence[str]] = None,
             **legacy):
  """Evaluates and returns {task: {metric: value}}.

  With PROMPT_FILES (several prompts), evaluates them as an ensemble in one
  batched pass (prompt_tuning.evaluation.ensemble) and returns {member_i or 'ensemble':
  {task: {metric: value}}}. `data_config` and `legacy` as in trainer.train.
  """
  data_config = data.config.resolve(data_config, legacy, "evaluate", EvalError)
  mixture_or_task_name = data_config.mixture_or_task_name
  batch_size, use_cached_tasks = data_config.batch_size, data_config.use_cached_tasks
  # Every setting is checked, and the prompt, frozen model and evaluation data
  # read, before anything is written.
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
  gin_utils.check_patterns("TRAINABLE_PARAMS", trainable_params, EvalError)
  if model_dir and not eval_output_dir and file_utils.exists(model_dir):
    _check_not_live(model_dir)
  if model_dir and prompt_file is None and prompt_files is None:
    _check_frozen_of_run(model_dir, frozen_path)
  lengths = data_config.prepare(EvalError)  # checks BATCH_SIZE and TASK_FEATURE_LENGTHS too
  seqio_eval.check_split(mixture_or_task_name, split, need_metrics=True,
                         hint="set --gin.EVAL_SPLIT to one of them")
  mesh = mesh_fn()
  batch = weights.dummy_batch(1, lengths["inputs"], lengths["targets"])
  abstract_trainable = weights.abstract_trainable(model, trainable_params, batch)
  if prompt_files is not None:
    from prompt_tuning.evaluation import ensemble  # pylint: disable=g-import-not-at-top
    members = ensemble.load_members(abstract_trainable, model, prompt_file, prompt_files)
    frozen = weights.load_frozen(model, frozen_path, batch, trainable_params, mesh)
    evaluator = seqio_eval.make_evaluator(model, mixture_or_task_name, lengths, split,
                                          output_dir, batch_size, use_cached_tasks, mesh)
    return ensemble.run(evaluator, model, members, frozen, batch_size, mesh, decoding)
  trainable, step, source = trained.load_trainable(abstract_trainable, prompt_file, model_dir)
  frozen = weights.load_frozen(model, frozen_path, batch, trainable_params, mesh)
  trainable = partitioning.replicate(mesh, trainable)
  evaluator = seqio_eval.make_evaluator(model, mixture_or_task_name, lengths, split, output_dir,
                                        batch_size, use_cached_tasks, mesh)
  if jax.process_index() == 0:
    print(f"Evaluating {source} (step {step}) on {mixture_or_task_name}:{split}", flush=True)
  return seqio_eval.run(evaluator, model, trees.merge(trainable, frozen), step, batch_size, mesh,
                        decoding=decoding)
