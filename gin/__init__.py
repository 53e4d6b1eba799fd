"""Gin configs installed with the package (as `prompt_tuning.gin`).

`prompt_tuning.gin_utils` puts this folder on gin's search path, so
`--gin_file=models/t5_1_1_base_prompt.gin` works without `--gin_search_paths`.
"""
