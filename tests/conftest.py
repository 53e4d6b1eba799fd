"""Shared pytest fixtures: the real public data in ../shared/data, and what the
whole test run shares (XLA settings, a compilation cache, artifacts made once).

Speed (the suite must fit CI's 10 minutes on 2 cores), by what costs most:
- XLA compiles with LLVM's cheap settings (`TEST_XLA_FLAGS`), in the tests'
  process and in every process they start (the same flags everywhere, so
  runs compared bit for bit are compiled alike): the tests run tiny shapes,
  where compiling costs far more than running, and this takes about a fifth
  of the suite's CPU time. The code computes the same operations; only
  rounding may differ from optimised code. The one test whose tolerance is
  the optimised code's rounding (remat) computes in a process of its own
  with XLA's defaults (`DEFAULT_XLA_ENV`).
- One persistent compilation cache for the run and its subprocesses, and
  across runs on this machine (`PT_TEST_JAX_CACHE`, default
  ~/.cache/prompt-tuning-jax/test-xla). JAX keys every entry by the program,
  the compile options, XLA flags and the JAX/jaxlib versions, so a change of
  code or flags misses it; the cache is capped (`CACHE_MAX_BYTES`).
- Artifacts that many tests only read (a random tiny frozen checkpoint, ...)
  are made once per test run and shared by the xdist workers (`shared_dir`).
"""
import contextlib
import fcntl
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(
    os.environ.get("PT_SHARED_DATA", REPO.parent / "shared" / "data"))

CACHE_MAX_BYTES = 2**30  # a whole cold run writes about 20 MB
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0",
                  "--xla_llvm_disable_expensive_passes=true")
# The environment for a process that compiles with XLA's defaults: the
# XLA_FLAGS the test run started with (xdist workers inherit the changed ones).
os.environ.setdefault("PT_TEST_USER_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
DEFAULT_XLA_ENV = {"XLA_FLAGS": os.environ["PT_TEST_USER_XLA_FLAGS"]}

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _with_flags(flags: str, extra) -> str:
  """`flags` (XLA_FLAGS text) plus those of `extra` it does not set itself."""
  flags = flags.split()
  names = {f.split("=", 1)[0] for f in flags}
  return " ".join(flags + [f for f in extra if f.split("=", 1)[0] not in names])


# Before JAX starts a backend here, and inherited by every process started.
os.environ["XLA_FLAGS"] = _with_flags(os.environ.get("XLA_FLAGS", ""), TEST_XLA_FLAGS)


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


# ------------------------------------------------ made once per test run


def _run_root(tmp_path_factory) -> pathlib.Path:
  """A folder every xdist worker of this run sees (each worker's basetemp is
  a child of the run's), or this process's basetemp without xdist."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def _locked(path: pathlib.Path):
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def shared_dir(tmp_path_factory, name: str, make) -> pathlib.Path:
  """`make(folder)` run once per test run (by whichever worker asks first,
  the others waiting for it); returns the folder. What it holds is read-only
  for the tests: copy it before changing anything."""
  root = _run_root(tmp_path_factory) / "shared"
  folder, done = root / name, root / f"{name}.done"
  with _locked(root / f"{name}.lock"):
    if not done.exists():
      folder.mkdir(parents=True, exist_ok=True)
      make(folder)
      done.touch()
  return folder


@pytest.fixture(scope="session")
def frozen_ckpt(tmp_path_factory):
  """A random tiny frozen model (helpers.TINY_FILES' model, seed 0) as a T5X
  checkpoint, written once per test run: its checkpoint folder."""
  import helpers  # pylint: disable=g-import-not-at-top
  folder = shared_dir(tmp_path_factory, "frozen_tiny", helpers.write_random_checkpoint)
  return str(folder / "checkpoint_0")


def pytest_configure(config):
  """One persistent XLA compilation cache for the whole run (and its
  subprocesses), kept between runs."""
  del config
  cache = os.environ.setdefault(
      "JAX_COMPILATION_CACHE_DIR",
      os.environ.get("PT_TEST_JAX_CACHE")
      or os.path.join(os.path.expanduser("~"), ".cache", "prompt-tuning-jax", "test-xla"))
  os.makedirs(cache, exist_ok=True)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  try:  # JAX evicts least-recently-used entries beyond the cap, under `filelock`'s locks
    import filelock  # pylint: disable=g-import-not-at-top,unused-import
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(CACHE_MAX_BYTES))
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
  except ImportError:  # without it, JAX refuses every cache read when a cap is set
    pass


# Test files by measured cost (CPU seconds on the 2-core machine, most first).
# xdist (--dist loadfile) hands whole files to its workers in collection
# order: the slow files start first and run beside the many quick ones,
# instead of one of them running alone at the end.
SLOW_FIRST = ("test_multihost.py", "test_narrow_matmul.py", "test_methods_superglue.py",
              "test_train.py", "test_remat.py", "test_bench.py", "test_padding.py",
              "test_sweep.py", "test_partitioning.py", "test_model.py", "test_methods.py",
              "test_rank_eval.py", "test_smop.py", "test_peft_interop.py", "test_decoding.py")


def pytest_collection_modifyitems(session, config, items):
  del session, config
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """A fake-gcs-server for this test process (one per xdist worker that
  asks), with the bucket gcs_emulator.BUCKET; STORAGE_EMULATOR_HOST points
  this process and every process it starts at it. Skips (with the reason)
  only where the bundled binary cannot run here."""
  import gcs_emulator  # pylint: disable=g-import-not-at-top
  server = gcs_emulator.Server(str(tmp_path_factory.mktemp("gcs") / "root"))
  try:
    server.start()
  except OSError as e:
    pytest.skip(f"no local GCS server: {e}")
  server.create_bucket(gcs_emulator.BUCKET)
  saved = os.environ.get("STORAGE_EMULATOR_HOST")
  os.environ["STORAGE_EMULATOR_HOST"] = server.url
  try:
    yield server
  finally:
    server.stop()
    if saved is None:
      os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
      os.environ["STORAGE_EMULATOR_HOST"] = saved
