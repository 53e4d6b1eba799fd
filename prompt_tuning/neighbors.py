"""pt-neighbors: the vocabulary tokens nearest to each prompt position (the
library is prompt_tuning.evaluation.neighbors, whose docstring says what it
computes and writes).

    pt-neighbors --checkpoint=gs://.../t5_1_1_lm100k_base/checkpoint_1100000 \
        --prompt=/runs/rte/numpy_checkpoints/checkpoint_30000 --top_k=5 \
        --task=taskless_super_glue_rte_v102 --task_module=prompt_tuning.tasks.super_glue \
        --output_dir=/runs/rte/neighbors
"""
import sys

from prompt_tuning.evaluation.neighbors import PROG, NeighborsError, default_vocabulary_path, run


def _define_flags():
  """Defined when the program runs, not on import, so that importing this module
  next to pt-train's or another program's flags never clashes."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("checkpoint", None, "The frozen model's T5X checkpoint (checkpoint_<step> "
                      "folder, local or gs://): its token_embedder/embedding table.")
  flags.DEFINE_string("prompt", None, "The prompt: a .npy [P, d] (or SMoP [k, P, d]), or a "
                      "numpy checkpoint folder holding encoder.prompt.prompt.npy.")
  flags.DEFINE_integer("top_k", 5, "Neighbours per prompt position (1..vocabulary size).")
  flags.DEFINE_string("output_dir", None, "Where to write neighbors.jsonl and neighbors.md.")
  flags.DEFINE_string("vocabulary", default_vocabulary_path(),
                      "The SentencePiece model (default T5's cc_all.32000, or "
                      "$PT_VOCABULARY_PATH). Only its own pieces are candidates (ids below "
                      "its piece count, 32000 for T5): sentinel ids (<extra_id_*>) and "
                      "padding rows of the embedding table are excluded.")
  flags.DEFINE_list("class_labels", None, "Class labels to look for among the neighbours, "
                    "e.g. entailment,not_entailment (a neighbour piece matches when, without "
                    "'\u2581' and lowercased, it equals the label or a one-piece word of it).")
  flags.DEFINE_string("task", None, "Take the class labels of this registered task instead.")
  flags.DEFINE_list("task_module", None, "Module(s) to import so that --task registers, e.g. "
                    "prompt_tuning.tasks.super_glue.")
  return flags.FLAGS


def console_main():
  from prompt_tuning import command  # pylint: disable=g-import-not-at-top
  flag_values = _define_flags()

  def main():
    if flag_values.task:
      command.load_tensorflow()  # task modules import seqio, which imports TensorFlow: quietly
    try:
      text = run(checkpoint=flag_values.checkpoint, prompt=flag_values.prompt,
                 top_k=flag_values.top_k, output_dir=flag_values.output_dir,
                 vocabulary=flag_values.vocabulary, class_labels=flag_values.class_labels,
                 task=flag_values.task, task_module=flag_values.task_module)
    except (NeighborsError, OSError) as e:  # OSError: storage unreachable, a permission
      command.fail(PROG, e)
    sys.stdout.write(text)

  command.run(PROG, main)


if __name__ == "__main__":
  console_main()
