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
