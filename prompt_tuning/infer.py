"""pt-infer: one frozen model serving many tasks, each example with its own
task's prompt, examples of different tasks in the same batches.

    pt-infer --gin_file=models/t5_1_1_base_prompt.gin --gin_file=runs/prompt_infer.gin \\
      --gin.CHECKPOINT_PATH="'gs://.../checkpoint_1100000'" \\
      --gin.MIXTURE_OR_TASK_MODULE="'prompt_tuning.tasks.glue'" \\
      --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 8}" \\
      --prompts=taskless_glue_sst2_v002=/p/sst2.npy,taskless_glue_rte_v002=/p/rte.npy \\
      --input=requests.jsonl --output=predictions.jsonl

The model, its checkpoint and vocabulary come from the gin files and flags
pt-eval takes (with runs/prompt_infer.gin in place of runs/prompt_eval.gin).
`--prompts=TASK=PATH,TASK=PATH` (repeatable) maps each registered seqio task
to its prompt: a .npy or a numpy checkpoint folder (SMoP checkpoints with
prompts/smop.gin, all of the model's shape). A comma inside a path is kept
when what follows it is not a registered task's name and '='. Plain prompts
may differ in length (PROMPT_LENGTH is not used): each is left-padded to the
longest with masked positions, which leaves every output unchanged (T5's
position biases are relative).

`--input`: JSONL, one example a line, `{"task": NAME, "inputs": TEXT, ...}`:
TEXT is the task's model input after its text preprocessing (what pt-eval
logs as `inputs_pretokenized`), tokenized with the task's vocabulary and cut
to TASK_FEATURE_LENGTHS['inputs'] with EOS as seqio does. `--output`: JSONL in
input order: each input line's keys plus `prediction` (the decoded output
string, before the task's postprocessor) and `score` (its summed token
log-likelihood); a task with class labels is decoded by rank classification
(EVAL_DECODING 'auto', as pt-eval) and also gets `label_scores` ({label:
log-likelihood}).

Examples of different tasks share batches: in input order, in two streams
(tasks decoded greedily, tasks ranked), so that a batch pays for one kind of
decoding. Each batch is one jitted call: the task index of each example
gathers its prompt from a [T, P, d] table (multiprompt.gather_rows), the
encoder runs with per-example prompts (multiprompt.per_example), then greedy
decoding for the rows of greedy tasks and label scoring for the others (each
skipped when no row needs it; a batch may hold both). The outputs equal
per-task pt-eval runs'.
"""
from absl import flags
import gin

from prompt_tuning import cli
from prompt_tuning import data
from prompt_tuning import gin_utils


def _define_flags():
  """pt-infer's own flags (defined by the command only: importing this module
  defines none)."""
  if "prompts" in flags.FLAGS:  # a second run in one process
    return
  flags.DEFINE_string("input", None, "JSONL of examples, one a line: "
                      "{\"task\": ..., \"inputs\": ...}.")
  flags.DEFINE_string("output", None, "JSONL of predictions, in input order.")
  flags.DEFINE_multi_string("prompts", [], "TASK=PATH[,TASK=PATH...] (repeatable): each "
                            "task's prompt, a .npy or a numpy checkpoint folder.")


def main():
  flags_ = flags.FLAGS
  try:
    gin.query_parameter("infer.model")
  except ValueError:
    raise gin_utils.ConfigError("add --gin_file=runs/prompt_infer.gin (after the model's gin "
                                "file)") from None
  if not flags_.input or not flags_.output:
    raise data.DataError("--input=FILE and --output=FILE are required (JSONL, one example a "
                         "line: {\"task\": ..., \"inputs\": ...})")
  from prompt_tuning.evaluation import predict  # pylint: disable=g-import-not-at-top
  predict.infer(flags_.input, flags_.output, flags_.prompts)


def console_main():
  _define_flags()
  cli.run(main, "pt-infer")


if __name__ == "__main__":
  console_main()
