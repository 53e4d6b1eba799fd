"""The package as pip builds it: a wheel holds `prompt_tuning.tasks` and the gin
configs, and imports work from an unrelated folder and from the repo root
(where the source folder `prompt_tuning/` shadows an installed copy).

The editable path with `wheel` present (the one that used to break) is what
`.ci/run` exercises: a fresh virtualenv, `bash run.sh`, then `pip install -e`.
"""
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

PROBE = ("import prompt_tuning, prompt_tuning.tasks.super_glue as sg, prompt_tuning.tasks.demo;"
         "from prompt_tuning import gin_utils;"
         "print(prompt_tuning.__file__); print(sg.__file__); print(gin_utils.package_gin_dir())")


def _setuptools_version():
  import setuptools  # pylint: disable=g-import-not-at-top
  return tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """The package built as a wheel from a copy of the tracked tree and installed
  (no dependencies) into a folder: (wheel, site folder)."""
  if _setuptools_version() < (64,):
    pytest.skip("building needs setuptools>=64 (pyproject.toml's build requirement)")
  tmp = tmp_path_factory.mktemp("pkg")
  files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                         check=False)
  if files.returncode != 0:
    pytest.skip("not a git checkout")
  src = tmp / "src"
  for name in files.stdout.decode().split("\0"):
    if not name or not os.path.lexists(REPO / name):
      continue
    (src / name).parent.mkdir(parents=True, exist_ok=True)
    if os.path.islink(REPO / name):
      os.symlink(os.readlink(REPO / name), src / name)
    else:
      shutil.copy2(REPO / name, src / name)
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
  subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
                        str(src)], check=True, capture_output=True)
  (wheel,) = (tmp / "dist").glob("*.whl")
  site = tmp / "site"
  subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)],
                 check=True, capture_output=True)
  return wheel, site


def test_wheel_holds_tasks_gin_configs_and_console_scripts(installed):
  wheel, _ = installed
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
  for name in ["prompt_tuning/tasks/__init__.py", "prompt_tuning/tasks/super_glue.py",
               "prompt_tuning/sweep/launchers/__init__.py",
               "prompt_tuning/sweep/launchers/tpu_vm.py",
               "prompt_tuning/gin/models/t5_1_1_base_prompt.gin",
               "prompt_tuning/gin/models/sizes/tiny.gin", "prompt_tuning/gin/runs/prompt_eval.gin",
               "prompt_tuning/gin/prompts/class_labels.gin", "prompt_tuning/gin/methods/mam.gin",
               "prompt_tuning/gin/runs/prompt_infer.gin"]:
    assert name in names, name
  for script in ["pt-train", "pt-eval", "pt-sweep", "pt-neighbors", "pt-infer"]:
    assert f"{script} = " in entry_points, entry_points


def _probe(cwd, site):
  env = dict(os.environ, PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True,
                       text=True, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout.split()[-3:]


def test_installed_package_imports_from_elsewhere(installed, tmp_path):
  _, site = installed
  package, super_glue, gin_dir = _probe(tmp_path, site)
  for path in (package, super_glue, gin_dir):
    assert path.startswith(str(site)), path
  assert os.path.isfile(os.path.join(gin_dir, "models", "t5_1_1_base_prompt.gin"))


def test_source_folder_is_complete_from_the_repo_root(installed):
  """From the repo root `./prompt_tuning` wins over the installed copy, so it
  must hold `tasks` itself (the symlink) and find the top-level gin/."""
  _, site = installed
  package, super_glue, gin_dir = _probe(REPO, site)
  assert package.startswith(str(REPO / "prompt_tuning")), package
  assert os.path.realpath(super_glue) == str(REPO / "tasks" / "super_glue.py")
  assert os.path.realpath(gin_dir) == str(REPO / "gin")
