"""Tasks used only by tests: an empty one, one without a validation split (bad input),
one of four examples."""
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

if "train_only_task" not in seqio.TaskRegistry.names():
  seqio.TaskRegistry.add(  # no validation split (bad input for evaluation)
      "train_only_task",
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {"inputs": ["ant bee cat"] * 16, "targets": ["cat"] * 16}),
          splits=("train",)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=demo.OUTPUT_FEATURES, metric_fns=[demo.exact_match])

if "four_examples_task" not in seqio.TaskRegistry.names():
  seqio.TaskRegistry.add(  # a task smaller than one batch of 8 (a few-shot split)
      "four_examples_task",
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {"inputs": ["ant bee cat", "dog eel fox", "gnu hen ibis", "jay kea lark"],
               "targets": ["cat", "fox", "ibis", "lark"]}),
          splits=("train",)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=demo.OUTPUT_FEATURES, metric_fns=[demo.exact_match])
