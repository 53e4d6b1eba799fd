"""GLUE tasks in T5's text-to-text format (importing registers them).

Tasks (inputs/targets identical to T5's `glue_*_v002` tasks, read from TFDS
`glue/<config>:2.0.0`):

* `glue_{cola,sst2,mrpc,qqp,stsb,mnli,qnli,rte}_v002`, e.g.
  'sst2 sentence: it is a charming journey .' -> 'positive',
  'rte sentence1: <premise> sentence2: <hypothesis>' -> 'entailment',
  'mnli hypothesis: <hypothesis> premise: <premise>' -> 'neutral',
  'stsb sentence1: ... sentence2: ...' -> '3.8' (score rounded to 0.2).
  `glue_mnli_v002` has the splits train, validation_matched,
  validation_mismatched, test_matched and test_mismatched;
  `glue_mnli_{matched,mismatched}_v002` have validation/test of one of them.
* `taskless_glue_*_v002`: the same without the leading task-name token
  ('sentence: it is a charming journey .').

Metrics as T5: accuracy; MRPC and QQP F1 and accuracy; CoLA Matthews
correlation; STS-B Pearson and Spearman correlation (all x100).
"""
import functools

from prompt_tuning.tasks import labels
from prompt_tuning.tasks import metrics
from prompt_tuning.tasks import postprocessors
from prompt_tuning.tasks import preprocessors
from prompt_tuning.tasks import registration
from prompt_tuning.tasks import sources

GLUE_TFDS_VERSION = "2.0.0"

# TFDS glue ClassLabel names (None: STS-B's float score).
LABEL_CLASSES = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "stsb": None,
    "mnli": ("entailment", "neutral", "contradiction"),
    "mnli_matched": ("entailment", "neutral", "contradiction"),
    "mnli_mismatched": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
}

SPLITS = {
    "mnli": ("train", "validation_matched", "validation_mismatched",
             "test_matched", "test_mismatched"),
    "mnli_matched": ("validation", "test"),
    "mnli_mismatched": ("validation", "test"),
}
DEFAULT_SPLITS = ("train", "validation", "test")

METRIC_FNS = {
    "cola": [metrics.matthews_corrcoef],
    "sst2": [metrics.accuracy],
    "mrpc": [metrics.f1_score_with_invalid, metrics.accuracy],
    "qqp": [metrics.f1_score_with_invalid, metrics.accuracy],
    "stsb": [metrics.pearson_corrcoef, metrics.spearman_corrcoef],
    "mnli": [metrics.accuracy],
    "mnli_matched": [metrics.accuracy],
    "mnli_mismatched": [metrics.accuracy],
    "qnli": [metrics.accuracy],
    "rte": [metrics.accuracy],
}


def task_name(config: str, taskless: bool = False) -> str:
  """'glue_<config>_v002', prefixed by 'taskless_' if `taskless`."""
  return f"{'taskless_' if taskless else ''}glue_{config}_v002"


def text_preprocessor(config: str):
  """T5's text preprocessor of a GLUE config."""
  if config == "stsb":
    return preprocessors.stsb
  # The MNLI configs are all written as 'mnli'.
  benchmark_name = "mnli" if config.startswith("mnli") else config
  return functools.partial(preprocessors.glue_text,
                           benchmark_name=benchmark_name,
                           label_names=LABEL_CLASSES[config])


def postprocess_fn(config: str):
  if config == "stsb":
    return postprocessors.string_to_float
  return functools.partial(postprocessors.string_label_to_class_id,
                           label_classes=LABEL_CLASSES[config])


def _register_tasks():
  for config in LABEL_CLASSES:
    tfds_name = f"glue/{config}:{GLUE_TFDS_VERSION}"
    source = sources.PreparedTfdsSource(
        tfds_name, splits=SPLITS.get(config, DEFAULT_SPLITS))
    for taskless in (False, True):
      name = task_name(config, taskless)
      chain = [text_preprocessor(config)]
      if taskless:
        chain.append(preprocessors.remove_first_text_token)
      registration.add_task(name, source, chain,
                            postprocess_fn=postprocess_fn(config),
                            metric_fns=METRIC_FNS[config])
      if LABEL_CLASSES[config]:
        labels.register_class_labels(name, LABEL_CLASSES[config])


_register_tasks()
