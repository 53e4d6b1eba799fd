"""The house rules, read from the source: the import graph has no circle and
no import runs from a lower layer up to a higher one (README "The house"); no
module uses another module's private name or another object's private state
(seqio's included); one line width (100) for the whole project."""
import ast
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "prompt_tuning"

# Lowest first: a module may import its own layer's modules and those below it.
LAYERS = (
    ("base", ("prompt_tuning", "prompt_tuning.tables", "prompt_tuning.progress",
              "prompt_tuning.checks", "prompt_tuning.quiet")),
    ("storage", ("prompt_tuning.storage",)),
    # Gin plumbing and the checks of configured values, for every layer above.
    ("config", ("prompt_tuning.gin_utils",)),
    ("model", ("prompt_tuning.model",)),
    ("methods", ("prompt_tuning.methods",)),
    ("data", ("prompt_tuning.data", "prompt_tuning.tasks")),
    ("evaluation", ("prompt_tuning.evaluation",)),
    ("training", ("prompt_tuning.training",)),
    ("interop", ("prompt_tuning.interop",)),
    ("shell", ("prompt_tuning.configurables",
               "prompt_tuning.command", "prompt_tuning.cli")),
    ("doors", ("prompt_tuning.train", "prompt_tuning.eval", "prompt_tuning.infer",
               "prompt_tuning.demo", "prompt_tuning.neighbors", "prompt_tuning.peft_commands",
               "prompt_tuning.convert", "prompt_tuning.api", "prompt_tuning.sweep")),
)


def _modules():
  out = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


MODULES = _modules()


def _layer(module):
  best = None
  for rank, (_, prefixes) in enumerate(LAYERS):
    for prefix in prefixes:
      if module == prefix or module.startswith(prefix + "."):
        if best is None or len(prefix) > best[1]:
          best = (rank, len(prefix))
  return best[0] if best else None


def _resolve(name):
  """The package module that `import name` (or `from name import x`) loads."""
  while name and name not in MODULES:
    name = name.rpartition(".")[0]
  return name or None


def _imports(module, path):
  """Every prompt_tuning module the file imports, at the top or in a function."""
  tree = ast.parse(path.read_text(), str(path))
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        up = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(up + ([base] if base else []))
      names = [f"{base}.{a.name}" for a in node.names] + [base]
    else:
      continue
    for name in names:
      if name.startswith("prompt_tuning"):
        target = _resolve(name)
        if target and target != module:
          found.add(target)
  # `from prompt_tuning.x import y` also names the package prompt_tuning.x; keep
  # only the deepest module each import reaches.
  return {t for t in found if not any(o.startswith(t + ".") for o in found)} - {"prompt_tuning"}


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def test_every_module_has_a_layer():
  assert [m for m in MODULES if _layer(m) is None] == []


def test_no_import_runs_up_a_layer():
  upward = sorted(f"{m} ({LAYERS[_layer(m)][0]}) imports {t} ({LAYERS[_layer(t)][0]})"
                  for m, targets in GRAPH.items() for t in targets if _layer(t) > _layer(m))
  assert upward == []


def test_no_import_circle():
  state, path, circles = {}, [], []

  def visit(module):
    state[module] = "open"
    path.append(module)
    for target in sorted(GRAPH.get(module, ())):
      if state.get(target) == "open":
        circles.append(" -> ".join(path[path.index(target):] + [target]))
      elif target not in state:
        visit(target)
    path.pop()
    state[module] = "done"

  for module in sorted(GRAPH):
    if module not in state:
      visit(module)
  assert circles == []


def test_the_checker_sees_circles_and_upward_imports(tmp_path):
  """The rules above can fail: a made-up package with both faults."""
  global MODULES, GRAPH  # pylint: disable=global-statement
  saved = MODULES, GRAPH
  try:
    MODULES = {"prompt_tuning.model.a": None, "prompt_tuning.model.b": None,
               "prompt_tuning.cli": None}
    GRAPH = {"prompt_tuning.model.a": {"prompt_tuning.model.b", "prompt_tuning.cli"},
             "prompt_tuning.model.b": {"prompt_tuning.model.a"}, "prompt_tuning.cli": set()}
    with pytest.raises(AssertionError, match="prompt_tuning.model.a -> prompt_tuning.model.b"):
      test_no_import_circle()
    with pytest.raises(AssertionError, match=r"imports prompt_tuning.cli \(shell\)"):
      test_no_import_runs_up_a_layer()
  finally:
    MODULES, GRAPH = saved


def _private_uses(path, module):
  """`other_module._name` attribute uses and `from x import _name` imports."""
  tree = ast.parse(path.read_text(), str(path))
  aliases = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
    elif isinstance(node, ast.ImportFrom) and node.module:
      for a in node.names:
        if a.name.startswith("_") and not a.name.startswith("__"):
          yield f"from {node.module} import {a.name}"
        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
        and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
        and node.value.id in aliases):
      target = aliases[node.value.id]
      if target != module and (target.startswith("prompt_tuning") or target.startswith("seqio")):
        yield f"{node.value.id}.{node.attr} ({target})"


def test_no_private_names_across_modules():
  found = sorted(f"{m}: {use}" for m, path in MODULES.items() for use in _private_uses(path, m))
  assert found == []


def _own_private_names(tree):
  """Private names a module defines: its functions, classes, and the
  attributes it sets (`self._x = ...`, `_x = ...` in a class body)."""
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
      names.add(node.attr)
    elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
      names.add(node.id)
  return {n for n in names if n.startswith("_")}


def test_no_private_state_of_others():
  """No module reads another's private attributes, seqio's (`evaluator._loggers`)
  included: only those of the module's own classes."""
  found = []
  # A namedtuple's public methods; gin's config, which has no public listing
  # (gin_utils, its one reader, says why).
  allowed = {"_replace", "_asdict", "_fields", "prompt_tuning.gin_utils: gin.config._CONFIG",
             "prompt_tuning.gin_utils: gin.config._format_value"}
  for module, path in MODULES.items():
    tree = ast.parse(path.read_text())
    own = _own_private_names(tree) | allowed
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
          and not node.attr.startswith("__") and node.attr not in own
          and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
        found.append(f"{module}: {ast.unparse(node)}")
  assert sorted(set(found) - allowed) == []


def test_line_width():
  long = []
  paths = [ROOT / "setup.py"] + [p for folder in ("prompt_tuning", "tasks", "tests", "bench")
                                 for p in sorted((ROOT / folder).rglob("*.py"))]
  for path in paths:
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if len(line) > 100:
        long.append(f"{path.relative_to(ROOT)}:{number} ({len(line)})")
  assert long == []
