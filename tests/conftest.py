"""Shared pytest fixtures: the real public data in ../shared/data."""
import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(
    os.environ.get("PT_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts):
  """Returns a path in ../shared/data, skipping the test when it is absent."""
  path = SHARED_DATA.joinpath(*parts)
  if not path.exists():
    pytest.skip(f"shared fixture {path} is absent (needs ../shared/data beside the checkout)")
  return path


@pytest.fixture
def tiny_checkpoint():
  return shared_path("t5x_tiny", "checkpoint_3")


@pytest.fixture
def t5_vocab_path():
  return shared_path("t5_vocab", "spiece.model")


@pytest.fixture
def fewglue_dir():
  return shared_path("fewglue")


@pytest.fixture
def released_prompts_dir():
  return shared_path("released_prompts", "t5_1_1_lm100k_base")


def pytest_configure(config):
  """One persistent XLA compilation cache for the whole run (and its
  subprocesses): the end-to-end tests compile the same tiny steps many times."""
  del config
  import tempfile  # pylint: disable=g-import-not-at-top
  cache = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                                tempfile.mkdtemp(prefix="pt-jax-cache-"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
