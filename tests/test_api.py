"""The README's Python API section, run as written; and the API's promise
that a caller's own gin config survives its calls."""
import pathlib
import re

import gin

from prompt_tuning import api
from prompt_tuning import gin_utils

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _api_block():
  text = README.read_text()
  section = text[text.index("## Python API"):]
  section = section[:section.index("\n## ", 1)]
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  assert len(blocks) == 1
  return blocks[0]


def test_readme_api_section_runs(capsys):
  namespace = {}
  code = compile(_api_block(), "README.md (Python API)", "exec")
  exec(code, namespace)  # pylint: disable=exec-used
  assert 0.0 <= namespace["metrics"]["demo_last_word"]["accuracy"] <= 100.0
  assert set(namespace["outputs"][0]) >= {"task", "inputs", "prediction", "score"}
  assert namespace["source"].endswith("checkpoint_20")
  out = capsys.readouterr().out
  assert "Wrote" in out  # pt-export-peft's line


def test_a_callers_gin_config_survives_api_calls():
  @gin.configurable("api_test_thing")
  def thing(value=0):
    return value

  gin.clear_config()
  gin.parse_config("api_test_thing.value = 7")
  gin.finalize()
  try:
    model = api.load_model(["models/demo_prompt.gin"], PROMPT_LENGTH=3)
    assert model.module.prompt.length == 3
    assert thing() == 7 and gin.config_is_locked()
  finally:
    gin.clear_config()
  with gin_utils.isolated():  # an empty config stays empty
    pass
  assert gin.config_str().strip() == ""
