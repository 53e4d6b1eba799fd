"""seqio tasks shipped with the package (installed as `prompt_tuning.tasks`).

Importing a task module registers its tasks:

* `super_glue`: T5's SuperGLUE tasks (`super_glue_*_v102`, `taskless_*`, WSC
  simple train/eval, mixtures `super_glue_v102` / `taskless_super_glue_v102`).
* `glue`: T5's GLUE tasks (`glue_*_v002`, `taskless_glue_*_v002`).
* `demo`: small synthetic byte-level tasks (no download).

The SuperGLUE and GLUE tasks use the configured vocabulary and SuperGLUE
folder: `registration.configure(vocabulary=..., superglue_data_dir=...)`
(called by pt-train / pt-eval with VOCABULARY and SUPERGLUE_DATA_DIR) registers
them again with those, whether they were imported before or after the call.

Helpers: `registration` (`add_task`, `add_mixture`, `configure`), `features`
(vocabulary, output features), `sources` (TFDS or JSONL data sources),
`superglue_jsonl` (the official SuperGLUE JSONL release in the TFDS layout),
`preprocessors`, `postprocessors`, `metrics` (incl. `super_glue_average`) and
`labels` (class labels for rank classification).
"""
