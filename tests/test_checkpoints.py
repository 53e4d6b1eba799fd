"""Tests of prompt_tuning.storage.t5x_checkpoints on the real tiny T5X
checkpoint and round trips."""
import gzip
import itertools
import json
import os

import jax.numpy as jnp
import msgpack
import numpy as np
import pytest

from prompt_tuning.storage import t5x_checkpoints

EXPECTED_SHAPES = {
    "token_embedder/embedding": (32128, 4),
    "decoder/logits_dense/kernel": (4, 32128),
    "encoder/relpos_bias/rel_embedding": (2, 4),
    "decoder/relpos_bias/rel_embedding": (2, 4),
    "encoder/layers_1/mlp/wi_0/kernel": (4, 8),
    "encoder/layers_0/mlp/wo/kernel": (8, 4),
    "encoder/layers_0/attention/query/kernel": (4, 4),
    "decoder/layers_1/encoder_decoder_attention/out/kernel": (4, 4),
    "decoder/layers_0/pre_cross_attention_layer_norm/scale": (4,),
    "encoder/encoder_norm/scale": (4,),
    "decoder/decoder_norm/scale": (4,),
}


# Independent readers of the format (numpy, gzip and msgpack only).


def _raw_tree(ckpt):
  def ext(code, data):
    assert code == 1
    shape, dtype, buf = msgpack.unpackb(data)
    return np.frombuffer(buf, np.dtype(dtype)).reshape(tuple(shape))
  with open(ckpt / "checkpoint", "rb") as f:
    return msgpack.unpackb(f.read(), ext_hook=ext, raw=False)


def _flat(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict) and "driver" not in value:
      yield from _flat(value, f"{prefix}{key}/")
    else:
      yield f"{prefix}{key}", value


def _read_zarr(folder):
  """Reads a gzip zarr v2 array; edge chunks are stored full size and cropped."""
  meta = json.loads((folder / ".zarray").read_text())
  assert meta["compressor"]["id"] == "gzip" and meta["order"] == "C"
  shape, chunks, dtype = meta["shape"], meta["chunks"], np.dtype(meta["dtype"])
  sep = meta.get("dimension_separator", ".")
  out = np.zeros(shape, dtype)
  grid = [range(-(-s // c)) for s, c in zip(shape, chunks)]
  for index in itertools.product(*grid):
    data = gzip.decompress((folder / sep.join(map(str, index))).read_bytes())
    chunk = np.frombuffer(data, dtype).reshape(chunks)
    region = tuple(slice(i * c, min((i + 1) * c, s))
                   for i, c, s in zip(index, chunks, shape))
    out[region] = chunk[tuple(slice(0, r.stop - r.start) for r in region)]
  return out


# The real tiny checkpoint.


def test_list_params_and_step(tiny_checkpoint):
  params = t5x_checkpoints.list_params(tiny_checkpoint)
  assert len(params) == 52
  for name, shape in EXPECTED_SHAPES.items():
    assert params[name] == (shape, "float32"), name
  for stack, n in (("encoder", 9), ("decoder", 14)):
    for layer in range(2):
      assert sum(k.startswith(f"{stack}/layers_{layer}/") for k in params) == n
  assert not any(k.startswith(("encoder/layers_2", "decoder/layers_2")) for k in params)
  assert t5x_checkpoints.load_step(tiny_checkpoint) == 3
  assert t5x_checkpoints.load_step(tiny_checkpoint / "checkpoint") == 3


def test_load_params_matches_independent_reading(tiny_checkpoint):
  loaded = t5x_checkpoints.flatten_params(t5x_checkpoints.load_params(tiny_checkpoint))
  raw = dict(_flat(_raw_tree(tiny_checkpoint)["optimizer"]["target"]))
  assert set(loaded) == set(raw)
  n_zarr = 0
  for name, leaf in raw.items():
    if isinstance(leaf, dict):
      assert leaf["kvstore"]["path"] == "target." + name.replace("/", ".")
      want = _read_zarr(tiny_checkpoint / leaf["kvstore"]["path"])
      n_zarr += 1
    else:
      want = leaf
    assert loaded[name].dtype == np.float32, name
    np.testing.assert_array_equal(loaded[name], want, err_msg=name)
  assert n_zarr == 38  # Every kernel and the embedding.
  # The embedding (chunks of 4096 rows) has a cropped edge chunk: 32128 = 7*4096 + 3456.
  assert loaded["token_embedder/embedding"].std() > 0.1


def test_load_params_subset_and_cast(tiny_checkpoint):
  names = ["token_embedder/embedding", "encoder/encoder_norm/scale"]
  full = t5x_checkpoints.load_params(tiny_checkpoint, names)
  assert set(t5x_checkpoints.flatten_params(full)) == set(names)
  half = t5x_checkpoints.load_params(tiny_checkpoint, names, dtype=jnp.bfloat16)
  for name in names:
    got = t5x_checkpoints.flatten_params(half)[name]
    want = t5x_checkpoints.flatten_params(full)[name]
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(got, want.astype(jnp.bfloat16))


def test_mismatches_reported_together(tiny_checkpoint):
  expected = dict(EXPECTED_SHAPES)
  expected["decoder/logits_dense/kernel"] = (4, 100)
  expected["encoder/layers_2/mlp/wo/kernel"] = (8, 4)
  with pytest.raises(t5x_checkpoints.CheckpointError) as e:
    t5x_checkpoints.load_params(tiny_checkpoint, expected_shapes=expected)
  message = str(e.value)
  assert str(tiny_checkpoint) in message
  assert "missing encoder/layers_2/mlp/wo/kernel (expected [8, 4])" in message
  assert ("decoder/logits_dense/kernel has shape [4, 32128], model expects [4, 100]"
          in message)
  assert "token_embedder" not in message
  # Matching shapes load, and only those names.
  params = t5x_checkpoints.load_params(tiny_checkpoint, expected_shapes=EXPECTED_SHAPES)
  assert set(t5x_checkpoints.flatten_params(params)) == set(EXPECTED_SHAPES)


def test_missing_checkpoint(tmp_path):
  for path in (tmp_path / "checkpoint_7", tmp_path):
    with pytest.raises(t5x_checkpoints.CheckpointError, match="No T5X checkpoint at") as e:
      t5x_checkpoints.load_params(path)
    assert str(path) in str(e.value)


# Writing.


def _params(seed):
  rng = np.random.default_rng(seed)
  return {
      "encoder": {"big": {"kernel": rng.normal(size=(300, 64)).astype(np.float32)},
                  "norm": {"scale": rng.normal(size=(8,)).astype(np.float32)}},
      "token_embedder": {"embedding": jnp.asarray(
          rng.normal(size=(200, 100)), jnp.bfloat16)},
      "ids": np.arange(6, dtype=np.int32).reshape(2, 3),
  }


def test_round_trip(tmp_path):
  params = _params(0)
  states = {"encoder": {"big": {"kernel": {"v_row": np.ones(300, np.float32)}}}}
  path = t5x_checkpoints.save_checkpoint(tmp_path, params, 42, param_states=states)
  assert path == str(tmp_path / "checkpoint_42")
  assert sorted(os.listdir(tmp_path)) == ["checkpoint_42"]
  assert sorted(os.listdir(path)) == [
      "checkpoint", "target.encoder.big.kernel", "target.token_embedder.embedding"]
  zarray = json.loads((tmp_path / "checkpoint_42/target.token_embedder.embedding/.zarray")
                      .read_text())
  assert zarray["dtype"] == "bfloat16"
  np.testing.assert_array_equal(
      _read_zarr(tmp_path / "checkpoint_42/target.encoder.big.kernel"),
      params["encoder"]["big"]["kernel"])

  raw = _raw_tree(tmp_path / "checkpoint_42")
  assert raw["version"] == 3
  assert raw["optimizer"]["target"]["encoder"]["big"]["kernel"]["kvstore"] == {
      "driver": "gfile", "path": "target.encoder.big.kernel"}
  step = raw["optimizer"]["state"]["step"]
  assert step.dtype == np.int32 and step.shape == () and step == 42

  assert t5x_checkpoints.load_step(path) == 42
  want = t5x_checkpoints.flatten_params(params)
  assert t5x_checkpoints.list_params(path) == {
      k: (tuple(v.shape), np.asarray(v).dtype.name) for k, v in want.items()}
  got = t5x_checkpoints.flatten_params(t5x_checkpoints.load_params(path))
  assert set(got) == set(want)
  for name, value in want.items():
    assert got[name].dtype == np.asarray(value).dtype, name
    np.testing.assert_array_equal(got[name], np.asarray(value), err_msg=name)
  tree = t5x_checkpoints.read_checkpoint_tree(path)
  np.testing.assert_array_equal(
      tree["optimizer"]["state"]["param_states"]["encoder"]["big"]["kernel"]["v_row"],
      np.ones(300, np.float32))


def test_second_save_replaces(tmp_path):
  t5x_checkpoints.save_checkpoint(tmp_path, _params(0), 5)
  newer = _params(1)
  path = t5x_checkpoints.save_checkpoint(tmp_path, newer, 5, keep_inline_below=0)
  assert sorted(os.listdir(tmp_path)) == ["checkpoint_5"]
  assert "target.ids" in os.listdir(path)  # Everything is zarr now.
  got = t5x_checkpoints.flatten_params(t5x_checkpoints.load_params(path))
  for name, value in t5x_checkpoints.flatten_params(newer).items():
    np.testing.assert_array_equal(got[name], np.asarray(value), err_msg=name)


def test_list_params_reads_no_zarr_data(tmp_path):
  path = t5x_checkpoints.save_checkpoint(tmp_path, _params(0), 1)
  os.remove(os.path.join(path, "target.encoder.big.kernel", "0.0"))
  assert t5x_checkpoints.list_params(path)["encoder/big/kernel"] == ((300, 64), "float32")


def test_flatten_unflatten():
  from flax.core import frozen_dict  # pylint: disable=g-import-not-at-top
  nested = {"a": {"b": {"c": 1}, "d": 2}, "e": 3}
  flat = {"a/b/c": 1, "a/d": 2, "e": 3}
  assert t5x_checkpoints.flatten_params(nested) == flat
  assert t5x_checkpoints.flatten_params(frozen_dict.freeze(nested)) == flat
  assert t5x_checkpoints.unflatten_params(flat) == nested


# Damaged checkpoints: one CheckpointError line naming the parameter and the file.


def _writable_copy(src, dst):
  """A copy of a checkpoint folder that tests may damage (the fixture is read-only)."""
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(src, dst)
  for root, _, files in os.walk(dst):
    os.chmod(root, 0o755)
    for name in files:
      os.chmod(os.path.join(root, name), 0o644)
  return dst


def _truncate_chunk(folder):
  with open(folder / "1.0", "r+b") as f:
    f.truncate(100)
  return "1.0", "is unreadable (Not enough data"


def _garble_zarray(folder):
  (folder / ".zarray").write_text('{"chunks": [4096, 4], "dtype": ')
  return ".zarray", "is not valid zarr metadata (Invalid JSON)"


def _delete_chunk(folder):
  os.remove(folder / "1.0")
  return "1.0", "is missing"


def _delete_folder(folder):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(folder)
  return "", "is missing"


DAMAGES = {"truncated_chunk": _truncate_chunk, "garbled_zarray": _garble_zarray,
           "missing_chunk": _delete_chunk, "missing_folder": _delete_folder}


def _check_message(message, name, folder_name, filename, what):
  assert "\n" not in message and "tensorstore_spec" not in message, message
  assert f"parameter {name}: " in message, message
  where = f"{folder_name}/{filename}" if filename else f"parameter folder {folder_name}"
  assert f"{where} {what}" in message, message
  assert "more unreadable" not in message, message  # No other parameter is blamed.


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_real_checkpoint(damage, tiny_checkpoint, tmp_path):
  ckpt = _writable_copy(tiny_checkpoint, tmp_path / "checkpoint_3")
  folder = ckpt / "target.token_embedder.embedding"
  filename, what = DAMAGES[damage](folder)
  # Listing reads no zarr data; the shapes are in the msgpack tree.
  assert t5x_checkpoints.list_params(ckpt)["token_embedder/embedding"] == ((32128, 4), "float32")
  with pytest.raises(t5x_checkpoints.CheckpointError) as e:
    t5x_checkpoints.load_params(ckpt)
  _check_message(str(e.value), "token_embedder/embedding", folder.name, filename, what)
  assert str(ckpt) in str(e.value)
  # Intact parameters still load on their own.
  other = t5x_checkpoints.load_params(ckpt, ["encoder/layers_0/mlp/wo/kernel"])
  assert t5x_checkpoints.flatten_params(other)["encoder/layers_0/mlp/wo/kernel"].shape == (8, 4)


def test_missing_chunk_is_not_read_as_zeros(tiny_checkpoint, tmp_path):
  """tensorstore's default reads a missing chunk as zeros (here 3456 embedding rows)."""
  ckpt = _writable_copy(tiny_checkpoint, tmp_path / "checkpoint_3")
  os.remove(ckpt / "target.token_embedder.embedding" / "7.0")  # The cropped edge chunk.
  with pytest.raises(t5x_checkpoints.CheckpointError,
                     match=r"chunk file target\.token_embedder\.embedding/7\.0 is missing"):
    t5x_checkpoints.load_params(ckpt, ["token_embedder/embedding"])


def test_every_damaged_parameter_is_counted(tiny_checkpoint, tmp_path):
  ckpt = _writable_copy(tiny_checkpoint, tmp_path / "checkpoint_3")
  _delete_chunk(ckpt / "target.token_embedder.embedding")
  _delete_folder(ckpt / "target.decoder.logits_dense.kernel")
  _garble_zarray(ckpt / "target.encoder.layers_0.mlp.wo.kernel")
  with pytest.raises(t5x_checkpoints.CheckpointError) as e:
    t5x_checkpoints.load_params(ckpt)
  message = str(e.value)
  # The first by name in full, the others named, in one line.
  assert "\n" not in message
  assert ("parameter decoder/logits_dense/kernel: parameter folder "
          "target.decoder.logits_dense.kernel is missing (and 2 more unreadable: "
          "encoder/layers_0/mlp/wo/kernel, token_embedder/embedding)") in message, message


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_written_checkpoint(damage, tmp_path, monkeypatch):
  monkeypatch.setattr(t5x_checkpoints, "_MAX_CHUNK_BYTES", 150 * 64 * 4)  # Two chunks of rows.
  params = _params(0)
  params["encoder"]["zeros"] = np.zeros((4, 5000), np.float32)
  path = t5x_checkpoints.save_checkpoint(tmp_path, params, 1)
  folder = tmp_path / "checkpoint_1" / "target.encoder.big.kernel"
  assert sorted(os.listdir(folder)) == [".zarray", "0.0", "1.0"]
  # Every chunk is written, even an all-zero one, so intact checkpoints load.
  got = t5x_checkpoints.flatten_params(t5x_checkpoints.load_params(path))
  np.testing.assert_array_equal(got["encoder/zeros"], params["encoder"]["zeros"])

  filename, what = DAMAGES[damage](folder)
  with pytest.raises(t5x_checkpoints.CheckpointError) as e:
    t5x_checkpoints.load_params(path, ["encoder/big/kernel", "encoder/norm/scale"])
  _check_message(str(e.value), "encoder/big/kernel", folder.name, filename, what)
