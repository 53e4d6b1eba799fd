"""Gin plumbing for pt-train / pt-eval, with T5X's user conventions.

- The gin configs shipped with the package are always on the search path, so
  `--gin_file=models/t5_1_1_base_prompt.gin` works after `pip install .`;
  `--gin_search_paths` adds the user's own folders (searched first).
- `--gin.NAME=value` is shorthand for `--gin_bindings='NAME = value'`.
- Overriding a macro that no config uses (a typo such as `--gin.TRAIN_STEP=10`)
  is an error rather than a silent no-op.
"""
import contextlib
import difflib
import logging
import numbers
import os
import pathlib
import re
import tokenize
from typing import Iterable, Mapping, Optional, Sequence

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


# gin has no public API that lists a parsed config's bindings under their full
# selectors (gin.config_str shortens them, and run.json keys must not change):
# this module is the one place that reads gin.config._CONFIG.
def _config():
  return gin.config._CONFIG  # pylint: disable=protected-access


def format_value(value) -> str:
  """A value as gin text (`@models.EncoderDecoderModel()`, `%NAME`, `[1, 2]`)."""
  return gin.config._format_value(value)  # pylint: disable=protected-access


def bindings() -> dict:
  """{'MACRO' or '[scope/]selector.param': gin text} for every binding of the
  parsed config (selectors without the package's `prompt_tuning.` prefix)."""
  out = {}
  for (scope, selector), params in _config().items():
    for param, value in params.items():
      if selector == "gin.macro":
        key = scope
      else:
        key = f"{selector.removeprefix('prompt_tuning.')}.{param}"
        key = f"{scope}/{key}" if scope else key
      out[key] = format_value(value)
  return dict(sorted(out.items()))


def referenced_macros() -> set:
  """Every macro name used as %NAME anywhere in the parsed config."""
  found = set()
  for params in _config().values():
    for value in params.values():
      _macro_references(value, found)
  return found


def defined_macros() -> set:
  return {selector for (selector, name) in _config() if name == "gin.macro"}


@contextlib.contextmanager
def isolated():
  """Within it, gin's global config is the caller's to replace; on leaving,
  the config that was there before (its bindings, and its lock) comes back.
  For library calls that parse a config of their own (configurables.build_model,
  prompt_tuning.api) inside a program or notebook that has its own."""
  saved, locked = gin.config_str(), gin.config_is_locked()
  gin.clear_config()
  try:
    yield
  finally:
    gin.clear_config()
    if saved.strip():
      with gin.unlock_config():
        gin.parse_config(saved)
      if locked:
        gin.finalize()


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
      # A dotless name is a macro (gin's syntax, any case): one no config reads
      # would be silently ignored (--gin.train_steps=10 trains TRAIN_STEPS).
      if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and name not in used:
        close = ([name.upper()] if name.upper() in used else
                 difflib.get_close_matches(name.upper(), sorted(used), n=3))
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"--gin.{name}: no config uses the macro {name}{hint}")
    # One binding at a time (as gin would parse them joined), so that an error
    # names the binding it is in.
    for binding in bindings:
      try:
        gin.parse_config(binding)
      except (ValueError, SyntaxError, tokenize.TokenError) as e:
        raise ConfigError(binding_error_message(binding, e)) from None
    gin.finalize()
  except ConfigError:
    raise
  except ImportError as e:  # a gin file's `import` of a module that is not there
    found = re.search(r"No module named '([^']+)'", str(e))
    name = found.group(1) if found else (e.name or str(e).strip().split("\n")[0])
    raise ConfigError(f"gin config error: a gin file imports {name}, which cannot be "
                      "imported: install it, or fix the import in the gin file") from None
  except (IOError, OSError) as e:
    raise ConfigError(f"gin: {e}. Gin files are looked up in --gin_search_paths and "
                      f"{package_gin_dir()}") from None
  except (ValueError, TypeError, SyntaxError, KeyError, tokenize.TokenError) as e:
    raise ConfigError(f"gin config error: {_parse_error_reason(e)}") from None
  finally:
    logging.disable(logging.NOTSET)


def _parse_error_reason(e: Exception, in_binding: bool = False) -> str:
  """gin's reason, in one line (without its '(line 1)' when it is about one binding)."""
  if isinstance(e, tokenize.TokenError):  # args: (message, (line, column))
    message = str(e.args[0]) if e.args else ""
    if "EOF" in message:
      return "a bracket or a triple-quoted string is not closed"
    return message or "cannot be tokenized"
  text = str(e).strip()
  first = text.splitlines()[0] if text else type(e).__name__
  return re.sub(r"\s*\(line \d+\)$", "", first) if in_binding else first


# A bare word, dotted name or path: a string value that lacks its quotes.
_UNQUOTED = re.compile(r"[A-Za-z_~./][\w./:~+-]*")


def check_patterns(name: str, patterns, error) -> None:
  """`error` unless `patterns` is a list of valid regular expressions
  (TRAINABLE_PARAMS): a bad one is one line naming it, not a traceback later."""
  if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)):
    raise error(f"{name} must be a list of regular expressions, got {patterns!r}")
  for pattern in patterns:
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      raise error(f"{name}: {pattern!r} is not a regular expression ({e})") from None


def binding_error_message(binding: str, e: Exception) -> str:
  """The one-line error for a --gin.NAME=VALUE (or --gin_bindings) gin cannot parse."""
  reason = _parse_error_reason(e, in_binding=True)
  name, equals, value = binding.partition("=")
  name, value = name.strip(), value.strip()
  if not equals or not re.fullmatch(r"[\w./]+", name):
    return f"gin config error: --gin_bindings={binding.strip()!r}: {reason}"
  flag = f"--gin.{name}={' '.join(value.split())}"
  if not value:
    return f"gin config error: --gin.{name} has no value: write --gin.{name}=VALUE"
  if isinstance(e, ValueError):
    # An unknown configurable or reference (@name, a.b.c = ...): gin's own words.
    return f"gin config error: {flag}: {reason}"
  if _UNQUOTED.fullmatch(value) and value not in ("True", "False", "None"):
    return (f"gin config error: {flag}: {value} is not a gin value (a string needs quotes: "
            f"--gin.{name}=\"'{value}'\")")
  if value[0] in "'\"" and (len(value) == 1 or value[-1] != value[0]):
    reason = f"its string lacks the closing {value[0]}"
  return f"gin config error: {flag} is not a valid gin value ({reason})"


# Checks of configured values, for pt-train and pt-eval to run before they
# read data or write anything. `error` is the caller's exception class.


def check_int(macro: str, value, error=ConfigError, *, minimum: Optional[int] = 1,
              none_means: Optional[str] = None):
  """`value` as an int, if it is an integer >= `minimum` (or None when
  `none_means` says what None does); else `error` naming the macro."""
  if value is None and none_means:
    return None
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
      or (minimum is not None and value < minimum)):
    what = ("an integer" if minimum is None else "a positive integer" if minimum == 1
            else f"an integer >= {minimum}")
    alternative = f", or None {none_means}" if none_means else ""
    raise error(f"{macro} must be {what}{alternative}, got {value!r}")
  return int(value)


def check_feature_lengths(lengths, error=ConfigError) -> dict:
  """TASK_FEATURE_LENGTHS as a dict, if it gives positive 'inputs' and 'targets' lengths."""
  example = "e.g. {'inputs': 512, 'targets': 8}"
  if not isinstance(lengths, Mapping):
    raise error(f"TASK_FEATURE_LENGTHS must be a dict of lengths, {example}; got {lengths!r}")
  missing = [k for k in ("inputs", "targets") if k not in lengths]
  if missing:
    raise error(f"TASK_FEATURE_LENGTHS lacks {' and '.join(map(repr, missing))}: give the "
                f"length of both features, {example}")
  for key, value in lengths.items():
    check_int(f"TASK_FEATURE_LENGTHS[{key!r}]", value, error)
  return dict(lengths)


def check_choice(macro: str, value, choices: Sequence, error=ConfigError):
  if value not in choices:
    raise error(f"{macro} must be one of {', '.join(map(repr, choices))}; got {value!r}")
  return value


def check_folder(macro: str, path, error=ConfigError) -> str:
  """`path`, if it names a folder that exists or can be created."""
  from prompt_tuning.storage import file_utils  # pylint: disable=g-import-not-at-top
  if not isinstance(path, str) or not path.strip():
    raise error(f"{macro} must be a folder path (a quoted string), got {path!r}")
  problem = file_utils.folder_problem(path)
  if problem:
    raise error(f"{macro} {problem}: give a folder path")
  return path


def write_operative_config(model_dir: str, name: str = "config.gin") -> None:
  """Writes the full operative config (T5X writes it as config.gin) atomically."""
  from prompt_tuning.storage import file_utils  # pylint: disable=g-import-not-at-top
  file_utils.write_text_atomic(os.path.join(model_dir, name), gin.operative_config_str())
