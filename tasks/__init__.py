"""seqio tasks shipped with the package (installed as `prompt_tuning.tasks`)."""
