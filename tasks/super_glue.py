"""SuperGLUE tasks in T5's text-to-text format (importing registers them).

Tasks (inputs/targets identical to T5's `super_glue_*_v102` tasks):

* `super_glue_{boolq,cb,copa,multirc,record,rte,wic,axb,axg}_v102`, e.g.
  'rte hypothesis: <hypothesis> premise: <premise>' -> 'entailment'.
  AX-b and AX-g (test split only) are written as RTE.
* `super_glue_wsc_v102_simple_train` (positive examples only, target: the
  referent) and `super_glue_wsc_v102_simple_eval` (validation/test, scored by
  whether the generated referent matches the candidate), e.g.
  'wsc: The city councilmen refused the demonstrators a permit because *they*
  advocated violence.' -> 'the demonstrators'.
* `taskless_...` versions of all of the above, without the leading task-name
  token ('hypothesis: ... premise: ...', 'The city councilmen ...').
* Mixtures `super_glue_v102` and `taskless_super_glue_v102`: the eight
  SuperGLUE tasks (WSC as its train/eval pair), rated by training-set size.

Data comes from TFDS `super_glue/<config>:1.0.2`, or from the official JSONL
release in the configured SuperGLUE folder; the vocabulary is the configured
one (see `registration.configure`, `sources` and `features`).
"""
import functools

from prompt_tuning.tasks import labels
from prompt_tuning.tasks import metrics
from prompt_tuning.tasks import postprocessors
from prompt_tuning.tasks import preprocessors
from prompt_tuning.tasks import registration
from prompt_tuning.tasks import sources
from prompt_tuning.tasks import superglue_jsonl

# The SuperGLUE configs registered as classification / QA tasks (WSC is below).
CONFIGS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "axb",
           "axg")

METRIC_FNS = {
    "boolq": [metrics.accuracy],
    "cb": [metrics.cb_metrics],
    "copa": [metrics.accuracy],
    "multirc": [metrics.multirc_metrics],
    "record": [metrics.record_metrics],
    "rte": [metrics.accuracy],
    "wic": [metrics.accuracy],
    "axb": [metrics.matthews_corrcoef],
    "axg": [metrics.axg_metrics],
}

# Training-set sizes, in examples as the tasks yield them, used as mixing
# rates (T5's SUPER_GLUE_WEIGHT_MAPPING). TFDS metadata is not available
# offline, so they are hard-coded: the official SuperGLUE train sizes, where
# MultiRC counts answer options (5,100 questions), ReCoRD counts
# (query, answer) examples and WSC counts its positive (referent) examples.
TRAIN_SIZES = {
    "boolq": 9_427,
    "cb": 250,
    "copa": 400,
    "multirc": 27_243,
    "record": 138_854,
    "rte": 2_490,
    "wic": 5_428,
    "wsc_simple_train": 259,
    "wsc_simple_eval": 0,
}


def task_name(config: str, taskless: bool = False) -> str:
  """'super_glue_<config>_v102', prefixed by 'taskless_' if `taskless`."""
  return f"{'taskless_' if taskless else ''}super_glue_{config}_v102"


def text_preprocessors(config: str) -> list:
  """T5's text preprocessors for a SuperGLUE config (not WSC)."""
  label_names = superglue_jsonl.LABEL_CLASSES.get(config)
  if config == "record":
    return [preprocessors.record]
  if config in ("axb", "axg"):  # The diagnostics are written as RTE.
    glue = functools.partial(preprocessors.glue_text, benchmark_name="rte",
                             label_names=label_names)
    return [preprocessors.rekey_axb, glue] if config == "axb" else [glue]
  feature_names = {
      "multirc": ("question", "answer", "paragraph"),
      # T5 ignores WiC's start/end character offsets.
      "wic": ("sentence1", "sentence2", "word"),
  }.get(config)
  return [functools.partial(preprocessors.glue_text, benchmark_name=config,
                            label_names=label_names,
                            feature_names=feature_names)]


def postprocess_fn(config: str):
  """The postprocessor of a SuperGLUE config (not WSC)."""
  if config == "record":
    return postprocessors.record
  if config == "multirc":
    return postprocessors.multirc
  if config == "axg":
    return postprocessors.axg
  return functools.partial(
      postprocessors.string_label_to_class_id,
      label_classes=superglue_jsonl.LABEL_CLASSES[config])


def source_fn(config: str, splits=None):
  """The source of a config, reading the configured SuperGLUE folder.

  Args:
    config: the TFDS super_glue config.
    splits: its splits to expose (default all).

  Returns:
    A function from `registration.Settings` to a `sources.SuperGlueSource`.
  """

  def build(settings: registration.Settings) -> sources.SuperGlueSource:
    return sources.SuperGlueSource(config, splits=splits,
                                   data_dir=settings.superglue_data_dir)

  return build


def _register_tasks():
  """Registers every SuperGLUE task, full and taskless."""
  for config in CONFIGS:
    source = source_fn(config)
    for taskless in (False, True):
      name = task_name(config, taskless)
      chain = text_preprocessors(config)
      if taskless:
        chain.append(preprocessors.remove_first_text_token)
      registration.add_task(
          name, source, chain, postprocess_fn=postprocess_fn(config),
          metric_fns=METRIC_FNS[config])
      if config != "record":
        labels.register_class_labels(
            name, superglue_jsonl.LABEL_CLASSES[config])

  # WSC as T5's referent generation: train on the positive examples only,
  # evaluate whether the generated referent is the candidate.
  wsc_train = source_fn("wsc.fixed", splits=("train",))
  wsc_eval = source_fn("wsc.fixed", splits=("validation", "test"))
  for taskless in (False, True):
    tail = [preprocessors.remove_first_text_token] if taskless else []
    registration.add_task(
        task_name("wsc", taskless) + "_simple_train", wsc_train,
        [functools.partial(preprocessors.wsc_simple,
                           correct_referent_only=True)] + tail,
        metric_fns=[])
    registration.add_task(
        task_name("wsc", taskless) + "_simple_eval", wsc_eval,
        [functools.partial(preprocessors.wsc_simple,
                           correct_referent_only=False)] + tail,
        postprocess_fn=postprocessors.wsc_simple,
        metric_fns=[metrics.accuracy])


def _register_mixtures():
  for taskless in (False, True):
    rates = []
    for key, size in TRAIN_SIZES.items():
      if key.startswith("wsc"):
        name = task_name("wsc", taskless) + key[len("wsc"):]
      else:
        name = task_name(key, taskless)
      rates.append((name, float(size)))
    registration.add_mixture(
        f"{'taskless_' if taskless else ''}super_glue_v102", rates)


_register_tasks()
_register_mixtures()
