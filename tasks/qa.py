"""Zero-shot domain transfer for QA: SQuAD v1.1 and the MRQA 2019 sets (importing registers them).

The setting of Lester et al. (2021), section 5 (Table 1): tune a prompt on
SQuAD, evaluate it unchanged on the MRQA 2019 out-of-domain dev sets.

Tasks (T5's text-to-text SQuAD format, T5's `squad` preprocessor, see
`preprocessors.squad`): inputs 'question: <question> context: <context>',
target the first gold answer, with punctuation padded by spaces as T5 does
('Who won?' -> 'Who won ?'); every gold answer (padded alike) is kept for the
metrics. Metrics: `metrics.squad`, i.e. 'em' and 'f1' of the official
evaluate-v1.1.py (max over the gold answers, mean x100).

* `squad_v110`: SQuAD v1.1, splits train and validation (TFDS
  `squad/v1.1:3.0.0`, or the official train-v1.1.json / dev-v1.1.json in the
  configured SQuAD folder).
* `mrqa_<name>_v100`, one per MRQA 2019 set (TFDS `mrqa/<config>:1.0.0`, or
  the official `<Name>.jsonl.gz` files in the configured MRQA folder; see
  `qa_data`):
  out-of-domain (split validation = the dev file): `bioasq`, `drop`, `duorc`
  (DuoRC.ParaphraseRC), `race`, `relation_extraction`, `textbookqa`;
  in-domain (train and validation): `squad`, `newsqa`, `triviaqa`
  (TriviaQA-web), `searchqa`, `hotpotqa`, `naturalquestions`
  (NaturalQuestionsShort). (`mrqa_squad_v100` is MRQA's version of SQuAD: its
  dev set drops the few questions without a detected answer span.)
* Mixtures for training on SQuAD and evaluating zero-shot:
  `squad_to_mrqa_<name>_v100` (`squad_v110` + one out-of-domain set, for each
  of the six) and `squad_to_mrqa_v100` (`squad_v110` + all six). Only
  `squad_v110` has a train split, so pt-train trains on SQuAD alone and
  evaluates every task of the mixture on `validation`.

There is no `taskless_` variant: the format has no leading task-name token to
remove. The folders are `registration.configure(squad_data_dir=...,
mrqa_data_dir=...)`, by default $SQUAD_DATA_DIR and $MRQA_DATA_DIR (else TFDS).
"""
from prompt_tuning.tasks import metrics
from prompt_tuning.tasks import postprocessors
from prompt_tuning.tasks import preprocessors
from prompt_tuning.tasks import qa_data
from prompt_tuning.tasks import registration

SQUAD_TASK = "squad_v110"
OUT_OF_DOMAIN = tuple(name for name, s in qa_data.MRQA_SETS.items() if not s.in_domain)


def mrqa_task_name(name: str) -> str:
  """'mrqa_<name>_v100' for a key of qa_data.MRQA_SETS."""
  return f"mrqa_{name}_v100"


def _squad_source(settings: registration.Settings):
  return qa_data.SquadSource(data_dir=settings.squad_data_dir)


def _mrqa_source(name: str):
  def source(settings: registration.Settings):
    return qa_data.MrqaSource(name, data_dir=settings.mrqa_data_dir)
  return source


def _register_tasks():
  qa = dict(postprocess_fn=postprocessors.qa, metric_fns=[metrics.squad])
  registration.add_task(SQUAD_TASK, _squad_source, [preprocessors.squad], **qa)
  for name in qa_data.MRQA_SETS:
    registration.add_task(mrqa_task_name(name), _mrqa_source(name), [preprocessors.squad],
                          **qa)
  for name in OUT_OF_DOMAIN:
    registration.add_mixture(f"squad_to_mrqa_{name}_v100",
                             [(SQUAD_TASK, 1.0), (mrqa_task_name(name), 1.0)])
  registration.add_mixture("squad_to_mrqa_v100",
                           [(SQUAD_TASK, 1.0)] + [(mrqa_task_name(n), 1.0) for n in OUT_OF_DOMAIN])


_register_tasks()
