"""Gin plumbing for pt-train / pt-eval, with T5X's user conventions.

- The gin configs shipped with the package are always on the search path, so
  `--gin_file=models/t5_1_1_base_prompt.gin` works after `pip install .`;
  `--gin_search_paths` adds the user's own folders (searched first).
- `--gin.NAME=value` is shorthand for `--gin_bindings='NAME = value'`.
- Overriding a macro that no config uses (a typo such as `--gin.TRAIN_STEP=10`)
  is an error rather than a silent no-op.
"""
import logging
import os
import pathlib
import re
from typing import Iterable, Sequence

import gin
import gin.config

import prompt_tuning


class ConfigError(ValueError):
  """A bad gin file, binding or macro; the message says what to fix."""


def package_gin_dir() -> str:
  """The installed `prompt_tuning/gin`, or `gin/` of a source checkout."""
  here = pathlib.Path(prompt_tuning.__file__).resolve().parent
  for candidate in (here / "gin", here.parent / "gin"):
    if (candidate / "models").is_dir():
      return str(candidate)
  raise ConfigError(f"gin configs not found beside {here}: reinstall the package")


def rewrite_gin_args(argv: Sequence[str]) -> list:
  """Turns `--gin.NAME=value` (and `--gin.NAME value`) into --gin_bindings flags."""
  out, i = [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--gin.") and not arg.startswith("--gin_"):
      name_value = arg[len("--gin."):]
      if "=" in name_value:
        name, value = name_value.split("=", 1)
      elif i + 1 < len(argv):
        name, value = name_value, argv[i + 1]
        i += 1
      else:
        raise ConfigError(f"{arg} has no value: write --gin.{name_value}=VALUE")
      out.append(f"--gin_bindings={name} = {value}")
    else:
      out.append(arg)
    i += 1
  return out


def _macro_references(value, found):
  if isinstance(value, gin.config.ConfigurableReference):
    selector = value.scoped_selector  # 'NAME/gin.macro' for %NAME
    if selector.endswith("/gin.macro"):
      found.add(selector[:-len("/gin.macro")].split("/")[-1])
  elif isinstance(value, dict):
    for v in value.values():
      _macro_references(v, found)
  elif isinstance(value, (list, tuple)):
    for v in value:
      _macro_references(v, found)
  return found


def referenced_macros() -> set:
  """Every macro name used as %NAME anywhere in the parsed config."""
  found = set()
  for params in gin.config._CONFIG.values():  # pylint: disable=protected-access
    for value in params.values():
      _macro_references(value, found)
  return found


def defined_macros() -> set:
  return {selector for (selector, name) in gin.config._CONFIG  # pylint: disable=protected-access
          if name == "gin.macro"}


def parse(gin_files: Sequence[str], bindings: Sequence[str],
          search_paths: Iterable[str] = ()) -> None:
  """Parses files then bindings (later ones win) and finalizes the config."""
  for path in [package_gin_dir()] + list(search_paths)[::-1]:
    gin.add_config_file_search_path(path)
  # User folders must win over the package's: gin searches in insertion order
  # from the most recently added, so add the package first.
  # gin's resource reader logs "ERROR Path not found" for every file it then
  # finds on the search path; real failures raise, so mute the noise.
  logging.disable(logging.ERROR)
  try:
    gin.parse_config_files_and_bindings(list(gin_files), None, finalize_config=False)
    used = referenced_macros()
    for binding in bindings:
      name = binding.split("=", 1)[0].strip()
      if re.fullmatch(r"[A-Z][A-Z0-9_]*", name) and name not in used:
        close = sorted(m for m in used if _similar(m, name))
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"--gin.{name}: no config uses the macro {name}{hint}")
    gin.parse_config_files_and_bindings(None, list(bindings), finalize_config=True)
  except ConfigError:
    raise
  except (IOError, OSError) as e:
    raise ConfigError(f"gin: {e}. Gin files are looked up in --gin_search_paths and "
                      f"{package_gin_dir()}") from None
  except (ValueError, TypeError, SyntaxError, KeyError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(f"gin config error: {first}") from None
  finally:
    logging.disable(logging.NOTSET)


def _similar(a: str, b: str) -> bool:
  a_parts, b_parts = set(a.split("_")), set(b.split("_"))
  return bool(a_parts & b_parts) or a.startswith(b[:4])


def write_operative_config(model_dir: str, name: str = "config.gin") -> None:
  """Writes the full operative config (T5X writes it as config.gin) atomically."""
  from prompt_tuning import file_utils  # pylint: disable=g-import-not-at-top
  file_utils.write_text_atomic(os.path.join(model_dir, name), gin.operative_config_str())
