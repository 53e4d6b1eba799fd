"""seqio tasks shipped with the package (installed as `prompt_tuning.tasks`).

Importing a task module registers its tasks:

* `super_glue`: T5's SuperGLUE tasks (`super_glue_*_v102`, `taskless_*`, WSC
  simple train/eval, mixtures `super_glue_v102` / `taskless_super_glue_v102`).
* `glue`: T5's GLUE tasks (`glue_*_v002`, `taskless_glue_*_v002`).
* `glue_transfer`: QQP <-> MRPC zero-shot transfer (`glue_mrpc_as_qqp_v002`,
  `glue_qqp_as_mrpc_v002`, their `taskless_` versions and mixtures).
* `qa`: SQuAD v1.1 (`squad_v110`) and the MRQA 2019 sets (`mrqa_<name>_v100`)
  for zero-shot domain transfer, and the mixtures `squad_to_mrqa_*_v100`.
* `demo`: small synthetic byte-level tasks (no download).

These tasks use the configured vocabulary and data folders:
`registration.configure(vocabulary=..., superglue_data_dir=...,
squad_data_dir=..., mrqa_data_dir=...)` (called by pt-train / pt-eval /
pt-infer with VOCABULARY, SUPERGLUE_DATA_DIR, SQUAD_DATA_DIR and
MRQA_DATA_DIR) registers them again with those, whether
they were imported before or after the call.

Helpers: `registration` (`add_task`, `add_mixture`, `configure`), `features`
(vocabulary, output features), `sources` (TFDS or JSONL data sources),
`qa_data` (SQuAD / MRQA from TFDS or their official files),
`superglue_jsonl` (the official SuperGLUE JSONL release in the TFDS layout),
`preprocessors`, `postprocessors`, `metrics` (incl. `super_glue_average`) and
`labels` (class labels for rank classification).
"""
