"""Prompt tuning of frozen T5X-format T5 models in JAX/Flax.

`gin/` is copied into the installed package as `prompt_tuning/gin/` and `tasks/`
is installed as `prompt_tuning.tasks`, so `--gin_file=models/t5_1_1_base_prompt.gin` resolves
after a plain `pip install .` with no search path.

In the source tree, `prompt_tuning/tasks` is a symlink to `tasks/`, so the source
folder is the complete package too: from the repo root, where `python -m ...` and
`python -m pytest` import `./prompt_tuning` ahead of any installed copy, every
module resolves whichever way the package was installed (and without installing).
pyproject.toml declares the build backend (PEP 517/660 installs always).
"""
import os
import shutil

import setuptools
from setuptools.command.build_py import build_py


class BuildPyWithGin(build_py):
  """Copies the gin configs in `gin/` into the package as `prompt_tuning/gin/`."""

  def run(self):
    super().run()
    for root, _, files in os.walk("gin"):
      for name in files:
        if name.endswith(".gin"):
          target = os.path.join(self.build_lib, "prompt_tuning", root)
          os.makedirs(target, exist_ok=True)
          shutil.copy2(os.path.join(root, name), target)


setuptools.setup(
    name="prompt-tuning-jax",
    version="0.1.0",
    description="Prompt tuning (Lester et al., 2021) and SMoP on frozen T5X checkpoints, in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["prompt_tuning", "prompt_tuning.launchers", "prompt_tuning.tasks"],
    package_dir={"prompt_tuning.tasks": "tasks"},
    cmdclass={"build_py": BuildPyWithGin},
    install_requires=[
        "absl-py",
        "flax>=0.8",
        "gin-config>=0.5",
        "matplotlib",
        "jax>=0.4.30",
        "msgpack",
        "numpy",
        "optax>=0.2",
        "sentencepiece",
        "seqio>=0.0.18",
        "tensorboard",
        "tensorflow-datasets",
        "tensorstore>=0.1.60",
    ],
    extras_require={"test": ["pytest", "pytest-xdist"]},
    entry_points={
        "console_scripts": [
            "pt-train=prompt_tuning.train:console_main",
            "pt-eval=prompt_tuning.eval:console_main",
            "pt-sweep=prompt_tuning.sweep:console_main",
            "pt-neighbors=prompt_tuning.neighbors:console_main",
            "pt-infer=prompt_tuning.infer:console_main",
            "pt-import-peft=prompt_tuning.peft_interop:import_console_main",
            "pt-export-peft=prompt_tuning.peft_interop:export_console_main",
        ]
    },
)
