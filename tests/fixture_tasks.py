"""Tasks used only by tests: an empty one (bad input)."""
import seqio
import tensorflow as tf

from prompt_tuning.tasks import demo

if "empty_task" not in seqio.TaskRegistry.names():
  seqio.TaskRegistry.add(
      "empty_task",
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {"inputs": tf.constant([], tf.string), "targets": tf.constant([], tf.string)}),
          splits=("train", "validation")),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=demo.OUTPUT_FEATURES)
