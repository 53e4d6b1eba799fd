"""Reads and writes Hugging Face's safetensors files with numpy alone.

Written by hand because the `safetensors` package is not one of our
dependencies (the project installs jax, flax, optax, seqio, TFDS, gin, absl,
tensorstore, numpy, sentencepiece, msgpack only), and the format is small and
fully documented (https://github.com/huggingface/safetensors, "Format"):

    8 bytes      N, the header size, unsigned little-endian 64-bit
    N bytes      a JSON object {name: {"dtype": "F32", "shape": [..],
                 "data_offsets": [begin, end]}, "__metadata__": {str: str}}
                 (the writer pads it with spaces to a multiple of 8)
    the rest     the tensors' bytes, little-endian, C order; offsets are
                 relative to the end of the header

Every check the format allows is made on read (sizes, offsets inside the
buffer, known dtypes, shapes matching byte counts), so a truncated or damaged
file gives one `SafetensorsError` naming the file and the problem.
"""
import json
import math
import struct
from typing import Dict, Mapping, Optional, Tuple

import ml_dtypes  # installed with jax
import numpy as np

from prompt_tuning.storage import file_utils

# The format's dtype names and their numpy equivalents (little-endian), in
# the order of the reference implementation's `Dtype` enum (safetensors 0.8,
# `safetensors/src/tensor.rs`), which its writer sorts by: increasing alignment.
DTYPES = {
    "BOOL": np.dtype("?"), "U8": np.dtype("u1"), "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"), "U16": np.dtype("<u2"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I32": np.dtype("<i4"), "U32": np.dtype("<u4"),
    "F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_RANK = {name: i for i, name in enumerate(DTYPES)}
# A header larger than this is refused as damage (safetensors' own limit).
MAX_HEADER_BYTES = 100_000_000


class SafetensorsError(ValueError):
  """A file that is not a valid safetensors file; the message names it."""


def parse(data: bytes, path: str = "<bytes>") -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
  """(tensors, metadata) of a safetensors file's bytes."""
  def bad(what):
    return SafetensorsError(f"{path} is not a valid safetensors file: {what}")

  if len(data) < 8:
    raise bad(f"only {len(data)} bytes")
  (n,) = struct.unpack("<Q", data[:8])
  if n > MAX_HEADER_BYTES or 8 + n > len(data):
    raise bad(f"its header claims {n} bytes, the file has {len(data)} (truncated?)")
  try:
    header = json.loads(data[8:8 + n].decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise bad(f"its header is not JSON ({e})") from None
  if not isinstance(header, dict):
    raise bad("its header is not a JSON object")
  metadata = header.pop("__metadata__", None) or {}
  buffer = memoryview(data)[8 + n:]
  tensors = {}
  for name, info in header.items():
    try:
      dtype = DTYPES[info["dtype"]]
      shape = tuple(int(s) for s in info["shape"])
      begin, end = (int(x) for x in info["data_offsets"])
      if any(d < 0 for d in shape):
        raise ValueError("negative dimension")
    except (KeyError, TypeError, ValueError):
      raise bad(f"tensor {name!r} has an unreadable entry {info!r}") from None
    size = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if not 0 <= begin <= end <= len(buffer) or end - begin != size:
      raise bad(f"tensor {name!r} ({info['dtype']} {list(shape)}) has data offsets "
                f"[{begin}, {end}] outside the {len(buffer)} data bytes or of the wrong size "
                "(truncated?)")
    tensors[name] = np.frombuffer(buffer[begin:end], dtype=dtype).reshape(shape).copy()
  return tensors, dict(metadata)


def load(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
  """(tensors, metadata) of a safetensors file (local or gs://)."""
  return parse(file_utils.read_bytes(path), path)


def serialize(tensors: Mapping[str, np.ndarray], metadata: Optional[Mapping[str, str]] = None
              ) -> bytes:
  """The bytes of a safetensors file holding `tensors` and string `metadata`,
  laid out as the reference writer lays them out: tensors by decreasing dtype
  alignment, then by name (so every tensor's data starts at a multiple of its
  element size), the header's `__metadata__` first, compact JSON padded with
  spaces to a multiple of 8 bytes."""
  prepared = []
  for name, value in tensors.items():
    array = np.ascontiguousarray(value)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if dtype not in _NAMES:
      raise SafetensorsError(f"tensor {name!r} has dtype {array.dtype}, which safetensors "
                             f"cannot hold (use one of {', '.join(sorted(DTYPES))})")
    prepared.append((name, _NAMES[dtype], array.astype(dtype, copy=False)))
  prepared.sort(key=lambda item: (-_RANK[item[1]], item[0]))
  header, chunks, offset = {}, [], 0
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  for name, dtype_name, array in prepared:
    raw = array.tobytes()
    header[name] = {"dtype": dtype_name, "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  text = json.dumps(header, separators=(",", ":")).encode("utf-8")
  text += b" " * (-len(text) % 8)
  return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def save(path: str, tensors: Mapping[str, np.ndarray],
         metadata: Optional[Mapping[str, str]] = None) -> None:
  """Writes a safetensors file atomically."""
  file_utils.write_bytes_atomic(path, serialize(tensors, metadata))
