"""Zero-shot transfer between the paraphrase tasks QQP and MRPC (importing registers them).

Lester et al. (2021), section 5 (Table 2).

QQP (is question 2 a duplicate of question 1?) and MRPC (are the two sentences
paraphrases?) ask the same question in different words: T5's GLUE format
writes QQP as 'qqp question1: <q1> question2: <q2>' -> 'not_duplicate' /
'duplicate' and MRPC as 'mrpc sentence1: <s1> sentence2: <s2>' ->
'not_equivalent' / 'equivalent'. A prompt tuned on one is evaluated on the
other by writing the other's data in the format the prompt was trained on:

* `glue_mrpc_as_qqp_v002`: MRPC validation data in QQP's format and label
  words: 'qqp question1: <sentence1> question2: <sentence2>' -> 'duplicate'
  for MRPC's 'equivalent' (class 1), 'not_duplicate' for 'not_equivalent'
  (class 0). Metrics MRPC's (F1 of class 1, accuracy); the class labels (for
  rank classification) are QQP's words.
* `glue_qqp_as_mrpc_v002`: QQP validation data in MRPC's format and label
  words: 'mrpc sentence1: <question1> sentence2: <question2>' -> 'equivalent'
  for 'duplicate', 'not_equivalent' for 'not_duplicate'. Metrics QQP's (F1,
  accuracy); class labels MRPC's words.
* `taskless_glue_{mrpc_as_qqp,qqp_as_mrpc}_v002`: the same without the leading
  task-name token ('question1: ... question2: ...'), the paper's setting.

The class ids of both tasks mean the same (0: not a paraphrase, 1: one), so a
predicted word maps to MRPC's (QQP's) class id unchanged. Data: TFDS
`glue/<mrpc|qqp>:2.0.0`, split validation only.

Mixtures that train on one and evaluate on both (only the source task has a
train split): `glue_qqp_to_mrpc_zeroshot_v002` (`glue_qqp_v002` +
`glue_mrpc_as_qqp_v002`), `glue_mrpc_to_qqp_zeroshot_v002`, and their
`taskless_` versions.
"""
import functools

from prompt_tuning.tasks import glue
from prompt_tuning.tasks import labels
from prompt_tuning.tasks import preprocessors
from prompt_tuning.tasks import registration
from prompt_tuning.tasks import sources

# The feature names of each task's TFDS examples (besides label and idx).
FEATURE_NAMES = {"mrpc": ("sentence1", "sentence2"), "qqp": ("question1", "question2")}
PAIRS = (("mrpc", "qqp"), ("qqp", "mrpc"))  # (data, written as)
SPLITS = ("validation",)


def task_name(data: str, written_as: str, taskless: bool = False) -> str:
  """E.g. 'taskless_glue_mrpc_as_qqp_v002'."""
  return f"{'taskless_' if taskless else ''}glue_{data}_as_{written_as}_v002"


def mixture_name(trained_on: str, evaluated_on: str, taskless: bool = False) -> str:
  """E.g. 'taskless_glue_qqp_to_mrpc_zeroshot_v002'."""
  return f"{'taskless_' if taskless else ''}glue_{trained_on}_to_{evaluated_on}_zeroshot_v002"


def _register_tasks():
  for data, written_as in PAIRS:
    source = sources.PreparedTfdsSource(f"glue/{data}:{glue.GLUE_TFDS_VERSION}", splits=SPLITS)
    rename = functools.partial(preprocessors.rename_features,
                               names=dict(zip(FEATURE_NAMES[data], FEATURE_NAMES[written_as])))
    for taskless in (False, True):
      chain = [rename, glue.text_preprocessor(written_as)]
      if taskless:
        chain.append(preprocessors.remove_first_text_token)
      name = task_name(data, written_as, taskless)
      registration.add_task(name, source, chain,
                            postprocess_fn=glue.postprocess_fn(written_as),
                            metric_fns=glue.METRIC_FNS[data])
      labels.register_class_labels(name, glue.LABEL_CLASSES[written_as])
      registration.add_mixture(mixture_name(written_as, data, taskless),
                               [(glue.task_name(written_as, taskless), 1.0), (name, 1.0)])


_register_tasks()
