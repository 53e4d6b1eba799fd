"""pt-import-peft / pt-export-peft against Hugging Face PEFT's own adapters and
scores (tests/make_peft_reference.py wrote them with PEFT 0.21.2)."""
import importlib.util
import json
import os
import pathlib
import shutil
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax.linen as nn

from prompt_tuning import configurables
from prompt_tuning.interop import peft
from prompt_tuning import methods
from prompt_tuning.model import weights
from prompt_tuning import peft_commands
from prompt_tuning.storage import numpy_checkpoints
from prompt_tuning.storage import safetensors_io
from prompt_tuning.storage import trees

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position
import make_hf_reference as mhr  # pylint: disable=g-import-not-at-top,wrong-import-position
import make_peft_reference as mpr  # pylint: disable=g-import-not-at-top,wrong-import-position

ADAPTERS = sorted(p.name for p in pathlib.Path(mpr.OUT).iterdir() if p.is_dir())
TOL = 1e-4


def model_bindings(config):
  return [f"NUM_EMBEDDINGS = {config['vocab']}", f"EMBED_DIM = {config['emb']}",
          f"NUM_HEADS = {config['heads']}", f"HEAD_DIM = {config['head_dim']}",
          f"MLP_DIM = {config['mlp']}", f"NUM_ENCODER_LAYERS = {config['num_encoder_layers']}",
          f"NUM_DECODER_LAYERS = {config['num_decoder_layers']}",
          f"RELATIVE_ATTENTION_NUM_BUCKETS = {config['buckets']}",
          f"RELATIVE_ATTENTION_MAX_DISTANCE = {config['max_distance']}",
          "ACTIVATION_DTYPE = 'float32'", "DROPOUT_RATE = 0.0"]


def build(method_gin, config):
  files = ["models/t5_1_1_small_prompt.gin"] + ([str(method_gin)] if method_gin else [])
  return configurables.build_model(files, model_bindings(config))


def our_scores(model, frozen, flat, input_ids, targets):
  params = jax.tree_util.tree_map(jnp.asarray, trees.unflatten({**frozen, **flat}))
  batch = {"encoder_input_tokens": jnp.asarray(input_ids),
           "decoder_input_tokens": jnp.asarray(mhr.shift_right(targets)),
           "decoder_target_tokens": jnp.asarray(targets)}
  # Causal-only logits, as HF computes them with decoder_attention_mask=None.
  logits = model.module.apply({"params": params}, batch["encoder_input_tokens"],
                              batch["decoder_input_tokens"], None)
  generated = model.predict_batch(params, batch, max_decode_length=mpr.DECODE_STEPS)
  return dict(logits=np.asarray(logits), target_loglik=np.asarray(model.score_batch(params, batch)),
              generated=np.asarray(generated))


@pytest.fixture(scope="module")
def reference():
  return mpr.load_reference()


@pytest.mark.parametrize("name", ADAPTERS)
def test_imported_adapter_scores_as_peft_does(name, reference, tmp_path):
  frozen, config, arrays = reference
  out = tmp_path / "imported"
  assert peft_commands.import_main([os.path.join(mpr.OUT, name), str(out)]) == 0
  assert numpy_checkpoints.verify(str(out)) is None
  model = build(out / peft.METHOD_GIN, config)
  abstract = trees.shapes(trees.split(
      nn.unbox(weights.abstract_params(model, weights.dummy_batch(1, 4, 2))),
      methods.TRAINABLE_PARAMS)[0])
  flat = {n: np.load(out / numpy_checkpoints.param_filename(n)) for n in abstract}
  assert {n: v.shape for n, v in flat.items()} == {n: tuple(s) for n, s in abstract.items()}
  ours = our_scores(model, frozen, flat, arrays["input_ids"], arrays["targets"])
  real = arrays["targets"] > 0
  np.testing.assert_allclose(ours["logits"][real], arrays[f"{name}:logits"][real], atol=TOL, rtol=0)
  np.testing.assert_allclose(ours["target_loglik"], arrays[f"{name}:target_loglik"], atol=TOL,
                             rtol=0)
  np.testing.assert_array_equal(ours["generated"], arrays[f"{name}:greedy"])
  if not name.startswith("prefix"):  # PEFT's generate() loses T5 prefixes (make_peft_reference)
    np.testing.assert_array_equal(ours["generated"], arrays[f"{name}:generate"])


@pytest.mark.parametrize("name", ADAPTERS)
def test_export_gives_back_peft_adapter(name, reference, tmp_path):
  """import then export: the adapter PEFT wrote, tensor for tensor (the prompt's
  unused decoder rows aside)."""
  _, config, _ = reference
  out = tmp_path / "imported"
  assert peft_commands.import_main([os.path.join(mpr.OUT, name), str(out)]) == 0
  model = build(out / peft.METHOD_GIN, config)
  flat = {n: np.load(out / f) for f in os.listdir(out) if f.endswith(".npy")
          for n in [f[:-4].replace(".", "/")]}
  exported = tmp_path / "exported"
  peft_config, tensors = peft.peft_tensors(model, flat, "tiny-t5")
  peft.write_adapter(str(exported), peft_config, tensors)
  theirs_config, theirs = peft.read_adapter(os.path.join(mpr.OUT, name))
  ours_config, ours = peft.read_adapter(str(exported))
  assert ours_config["peft_type"] == theirs_config["peft_type"]
  if name == "prompt":
    length = theirs_config["num_virtual_tokens"]
    theirs = {"prompt_embeddings": theirs["prompt_embeddings"][:length]}
  if name.startswith("prefix"):  # only the blocks PEFT reads (peft.prefix_blocks)
    dim = theirs_config["token_dim"]
    read = sorted({j for pair in peft.prefix_blocks(theirs_config["num_layers"])
                   for j in pair})
    pick = lambda rows: np.concatenate([rows[:, j * dim:(j + 1) * dim] for j in read], 1)
    theirs = {"prompt_embeddings": pick(theirs["prompt_embeddings"])}
    ours = {"prompt_embeddings": pick(ours["prompt_embeddings"])}
  assert sorted(ours) == sorted(theirs)
  for key in theirs:
    np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
  if name.startswith("lora"):
    scale = lambda c: c["lora_alpha"] / (np.sqrt(c["r"]) if c.get("use_rslora") else c["r"])
    assert scale(ours_config) == pytest.approx(scale(theirs_config))
    assert sorted(ours_config["target_modules"]) == sorted(theirs_config["target_modules"])
  for field in ("num_virtual_tokens", "token_dim", "num_layers", "num_attention_heads"):
    if field in theirs_config and name != "prompt":
      assert ours_config[field] == theirs_config[field], field
  # PEFT's own loader reads what we wrote (when torch and peft are installed).
  if importlib.util.find_spec("torch") and importlib.util.find_spec("peft"):
    frozen, _, arrays = mpr.load_reference()
    got = mpr.scores(mpr.load_adapter(frozen, str(exported)),
                     {"input_ids": arrays["input_ids"], "targets": arrays["targets"]})
    np.testing.assert_allclose(got["target_loglik"], arrays[f"{name}:target_loglik"], atol=1e-5)


def test_safetensors_round_trip_and_layout(tmp_path):
  tensors = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([1, -2], np.int64),
             "h": np.array([0.5, 1.5], np.float16)}
  path = tmp_path / "x.safetensors"
  safetensors_io.save(str(path), tensors, {"format": "pt"})
  data = path.read_bytes()
  (n,) = struct.unpack("<Q", data[:8])
  assert n % 8 == 0
  header = json.loads(data[8:8 + n])
  assert header["__metadata__"] == {"format": "pt"}
  assert header["a"] == {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}
  got, metadata = safetensors_io.load(str(path))
  assert metadata == {"format": "pt"}
  for k, v in tensors.items():
    assert got[k].dtype == v.dtype
    np.testing.assert_array_equal(got[k], v)
  # PEFT's own file reads back with the values its config describes.
  peft_tensors, _ = safetensors_io.load(os.path.join(mpr.OUT, "prompt", peft.WEIGHTS_FILE))
  assert peft_tensors["prompt_embeddings"].shape == (6, 16)


def test_safetensors_bytes_are_the_reference_writers():
  """testdata/reference_writer.safetensors was written by the safetensors
  package itself (0.8.0, `safetensors.numpy.save(tensors, metadata={"format":
  "np"})`, thirteen tensors of twelve dtypes): read and written again, the
  same bytes. Its writer orders tensors by decreasing dtype alignment, then by
  name (an F16[3] named before an F32 comes after it, so the F32 data starts
  at byte 0, not 6), and puts `__metadata__` first in the header."""
  data = (pathlib.Path(__file__).parent / "testdata" / "reference_writer.safetensors").read_bytes()
  tensors, metadata = safetensors_io.parse(data)
  assert len(tensors) == 13 and metadata == {"format": "np"}
  assert safetensors_io.serialize(tensors, metadata) == data
  small = safetensors_io.serialize({"a": np.zeros(3, np.float16), "b": np.zeros(1, np.float32)})
  (n,) = struct.unpack("<Q", small[:8])
  header = json.loads(small[8:8 + n])
  assert header["b"]["data_offsets"] == [0, 4] and header["a"]["data_offsets"] == [4, 10]


def _write_adapter_copy(tmp_path, name="lora_qv"):
  folder = tmp_path / "adapter"
  shutil.copytree(os.path.join(mpr.OUT, name), folder)
  return folder


def _edit_config(folder, **changes):
  path = folder / peft.CONFIG_FILE
  config = json.loads(path.read_text())
  config.update(changes)
  path.write_text(json.dumps(config))


def _drop_tensors(folder, pattern):
  path = folder / peft.WEIGHTS_FILE
  tensors, metadata = safetensors_io.load(str(path))
  safetensors_io.save(str(path), {k: v for k, v in tensors.items() if pattern not in k}, metadata)


BAD_IMPORTS = {
    "missing folder": (lambda f: shutil.rmtree(f), "is not a folder"),
    "no config": (lambda f: os.remove(f / peft.CONFIG_FILE), "has no adapter_config.json"),
    "config not json": (lambda f: (f / peft.CONFIG_FILE).write_text("{r: 2"),
                        "is not valid JSON"),
    "pickle only": (lambda f: (os.rename(f / peft.WEIGHTS_FILE, f / "adapter_model.bin")),
                    "only adapter_model.bin"),
    "truncated weights": (lambda f: (f / peft.WEIGHTS_FILE).write_bytes(
        (f / peft.WEIGHTS_FILE).read_bytes()[:-10]), "truncated"),
    "garbage weights": (lambda f: (f / peft.WEIGHTS_FILE).write_bytes(b"abc"),
                        "not a valid safetensors file"),
    "other peft type": (lambda f: _edit_config(f, peft_type="IA3"), "'IA3' is not convertible"),
    "dora": (lambda f: _edit_config(f, use_dora=True), "use_dora = True is not supported"),
    "rank pattern": (lambda f: _edit_config(f, rank_pattern={"q": 4}), "rank_pattern"),
    "wrong rank": (lambda f: _edit_config(f, r=3), "r = 3 expects"),
    "not t5": (lambda f: _edit_config(f, task_type="CAUSAL_LM"), "only T5 adapters"),
    "subset of layers": (lambda f: _drop_tensors(f, "decoder.block.1.layer.1.EncDecAttention.v"),
                         "does not convert"),
    # Odd values (a careless edit, a hostile file): one line each, never a traceback.
    "peft type a list": (lambda f: _edit_config(f, peft_type=["LORA"]),
                         "peft_type ['LORA'] is not convertible"),
    "dropout not a number": (lambda f: _edit_config(f, lora_dropout="abc"),
                             "lora_dropout must be a number in [0, 1), got 'abc'"),
    "dropout above 1": (lambda f: _edit_config(f, lora_dropout=1.5),
                        "lora_dropout must be a number in [0, 1), got 1.5"),
    "alpha NaN": (lambda f: (f / peft.CONFIG_FILE).write_text(
        (f / peft.CONFIG_FILE).read_text().replace('"lora_alpha": ', '"lora_alpha": NaN, "x": ')),
                  "lora_alpha must be a finite number > 0, got nan"),
    "shape overflows": (lambda f: _overflowing_shape(f), "has an unreadable entry"),
}


def _overflowing_shape(folder):
  """A safetensors header whose shape's byte count overflows 64 bits."""
  path = folder / peft.WEIGHTS_FILE
  data = path.read_bytes()
  n = int.from_bytes(data[:8], "little")
  header = json.loads(data[8:8 + n])
  name = sorted(k for k in header if k != "__metadata__")[0]
  header[name]["shape"] = [2**40, 2**40, -1]
  text = json.dumps(header).encode()
  path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n:])


def test_method_gin_escapes_what_it_quotes(tmp_path):
  """A folder name holding a newline (and a base model with one) stays inside
  method.gin's comment lines: the file parses as gin."""
  import gin  # pylint: disable=g-import-not-at-top
  folder = _write_adapter_copy(tmp_path)
  odd = tmp_path / "odd\nname"
  os.rename(folder, odd)
  _edit_config(odd, base_model_name_or_path="t5\ninclude 'nowhere.gin'")
  out = tmp_path / "out"
  assert peft_commands.import_main([str(odd), str(out)]) == 0
  text = (out / peft.METHOD_GIN).read_text()
  lines = text.splitlines()
  assert "include 'nowhere.gin'" not in lines  # escaped inside a comment line
  assert all(line.startswith(("#", "include 'methods/lora.gin'", "LORA_")) for line in lines)
  with gin.unlock_config():
    gin.parse_config([l for l in lines if not l.startswith("include")])
  gin.clear_config()


@pytest.mark.parametrize("case", sorted(BAD_IMPORTS))
def test_bad_import_is_one_line_and_writes_nothing(case, tmp_path, capsys):
  damage, message = BAD_IMPORTS[case]
  folder = _write_adapter_copy(tmp_path)
  damage(folder)
  out = tmp_path / "out"
  assert peft_commands.import_main([str(folder), str(out)]) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("pt-import-peft: error: ") and "\n" not in err, err
  assert message in err, err
  assert not out.exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith("out")]


def test_import_refuses_prefixes_peft_cannot_run_on_t5(tmp_path, capsys):
  folder = _write_adapter_copy(tmp_path, "prefix")
  _edit_config(folder, num_transformer_submodules=1)
  assert peft_commands.import_main([str(folder), str(tmp_path / "out")]) == 1
  assert "PEFT runs T5 prefixes only with 2" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_import_refuses_a_used_out_dir_and_bad_usage(tmp_path, capsys):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  assert peft_commands.import_main([os.path.join(mpr.OUT, "prompt"), str(out)]) == 1
  assert "exists and is not an empty folder" in capsys.readouterr().err
  assert sorted(os.listdir(out)) == ["keep.txt"]
  assert peft_commands.import_main([os.path.join(mpr.OUT, "prompt")]) == 1
  assert "usage: pt-import-peft ADAPTER_DIR OUT_DIR" in capsys.readouterr().err


def test_pt_export_peft_of_a_trained_lora_run(tmp_path, frozen_ckpt):
  """pt-train a tiny LoRA run, pt-export-peft it, pt-import-peft it back:
  the same parameters; and the bad-input cases of pt-export-peft."""
  checkpoint = frozen_ckpt
  model_dir = tmp_path / "run"
  helpers.train_in_process(model_dir, [f"INITIAL_CHECKPOINT_PATH = '{checkpoint}'",
                                       "TRAIN_STEPS = 2", "EVAL_PERIOD = None", "LORA_RANK = 2"],
                           files=("methods/lora.gin", "runs/prompt_finetune.gin"))
  gin_args = ["--gin_file=models/t5_1_1_small_prompt.gin", "--gin_file=models/sizes/tiny.gin",
              "--gin_file=methods/lora.gin", *helpers.as_flags(helpers.MODEL_BINDINGS),
              "--gin.LORA_RANK=2"]
  export = tmp_path / "peft"
  status, err = _export_in_process([*gin_args, f"--gin.MODEL_DIR='{model_dir}'",
                                    f"--output_dir={export}", "--base_model=tiny"])
  assert status == 0, err
  config = json.loads((export / peft.CONFIG_FILE).read_text())
  assert (config["peft_type"], config["r"], config["target_modules"]) == ("LORA", 2, ["q", "v"])
  assert config["base_model_name_or_path"] == "tiny"
  back = tmp_path / "back"
  assert peft_commands.import_main([str(export), str(back)]) == 0
  step = numpy_checkpoints.latest_step(str(model_dir))
  trained = numpy_checkpoints.checkpoint_dir(str(model_dir), step)
  lora_files = sorted(f for f in os.listdir(trained) if ".lora." in f)
  assert lora_files and lora_files == sorted(f for f in os.listdir(back) if f.endswith(".npy"))
  for f in lora_files:
    np.testing.assert_array_equal(np.load(back / f), np.load(os.path.join(trained, f)))
  assert "LORA_RANK = 2" in (back / peft.METHOD_GIN).read_text()

  # Bad input: one line, nothing written.
  status, err = _export_in_process([*gin_args, f"--gin.MODEL_DIR='{model_dir}'",
                                    f"--output_dir={export}"])
  assert status == 1 and "exists and is not an empty folder" in err, err
  status, err = _export_in_process([*gin_args, f"--gin.MODEL_DIR='{model_dir}'"])
  assert status == 1 and "give --output_dir" in err, err
  status, err = _export_in_process(
      ["--gin_file=models/t5_1_1_small_prompt.gin", "--gin_file=models/sizes/tiny.gin",
       "--gin_file=methods/lora.gin", "--gin_file=methods/prompt.gin",
       *helpers.as_flags(helpers.MODEL_BINDINGS), "--gin.LORA_RANK=2",
       f"--gin.MODEL_DIR='{model_dir}'", f"--output_dir={tmp_path / 'x'}"])
  assert status == 1 and err.count("\n") == 1 and "pt-export-peft: error:" in err, err
  assert not (tmp_path / "x").exists()


def test_export_refuses_methods_peft_lacks():
  model = configurables.build_model(helpers.TINY_FILES + ["methods/prefix.gin"],
                                    helpers.MODEL_BINDINGS)
  flat = {"decoder/layers_0/self_attention/prefix/key": np.zeros((2, 16), np.float32)}
  with pytest.raises(peft.PeftError, match="only runs with methods/prefix_peft.gin"):
    peft.peft_tensors(model, flat)
  # PEFT's cache layout ties decoder layers i and i + L/2: untied prefixes cannot export.
  peft_model = configurables.build_model(helpers.TINY_FILES + ["methods/prefix_peft.gin"],
                                         helpers.MODEL_BINDINGS + ["PREFIX_LENGTH = 2"])
  layers = peft_model.module.config.num_decoder_layers
  rng = np.random.RandomState(0)
  untied = {f"decoder/layers_{i}/self_attention/prefix/{kv}": rng.randn(2, 16).astype("f4")
            for i in range(layers) for kv in ("key", "value")}
  with pytest.raises(peft.PeftError, match="one prefix"):
    peft.peft_tensors(peft_model, untied)
  tied = {k: untied[k.replace(f"layers_{i}/", f"layers_{i % (layers // 2)}/")]
          for k in untied for i in [int(k.split("/")[1].split("_")[1])]}
  config, tensors = peft.peft_tensors(peft_model, tied)
  assert tensors["prompt_embeddings"].shape == (2, 2 * layers * 16)
  with pytest.raises(peft.PeftError, match="holds one method"):
    peft.peft_tensors(model, {**flat, "encoder/prompt/prompt": np.zeros((2, 32))})
  with pytest.raises(peft.PeftError, match="PEFT has no equivalent"):
    peft.peft_tensors(model, {"encoder/layers_0/mlp_adapter/up": np.zeros((2, 32))})


def _export_in_process(args):
  import contextlib  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  saved_argv, err = sys.argv, io.StringIO()
  flags.FLAGS.unparse_flags()
  gin.clear_config()
  sys.argv = ["pt-export-peft", *map(str, args)]
  try:
    with contextlib.redirect_stderr(err):
      try:
        peft_commands.export_console_main()
        status = 0
      except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  finally:
    sys.argv = saved_argv
    gin.clear_config()
    flags.FLAGS.unparse_flags()
  return status, err.getvalue()
