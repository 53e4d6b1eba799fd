r"""pt-neighbors: the vocabulary tokens nearest to each prompt position.

What did a prompt learn? For every prompt position (every position of every
prompt of a SMoP `[k, P, d]` prompt), the top-k tokens of the frozen model's
vocabulary by cosine similarity between the prompt vector and the rows of the
model's token embedding table (`token_embedder/embedding` of its T5X
checkpoint), as in Lester et al. (2021), section 7.

    pt-neighbors --checkpoint=gs://.../t5_1_1_lm100k_base/checkpoint_1100000 \
        --prompt=/runs/rte/numpy_checkpoints/checkpoint_30000 --top_k=5 \
        --task=taskless_super_glue_rte_v102 --task_module=prompt_tuning.tasks.super_glue \
        --output_dir=/runs/rte/neighbors

Only the SentencePiece model's own pieces are candidates: ids below its piece
count (32,000 for T5). The sentinel ids (`<extra_id_*>`, ids 32000..32099 of
T5) and the padding rows after them (the table has 32,128 rows) are excluded.
Cosine similarity is computed in float32 on rows normalised by
`max(norm, 1e-8)`; ties are broken by the lower token id.

Writes `OUTPUT_DIR/neighbors.jsonl`, one line per prompt position:
`{"prompt": j (SMoP only), "position": i, "ids": [...], "pieces": [...],
"similarities": [...], "label_match": [...] (with class labels only)}`, and a
readable table `OUTPUT_DIR/neighbors.md`, also printed to stdout.

Label matches (with `--class_labels=a,b` or the labels of `--task`): a
neighbour piece matches a label when, with SentencePiece's word-start marker
'▁' removed and lowercased, it equals the whole label lowercased
('equivalent' <- '▁equivalent') or a whole word of it (split at '_' and spaces)
that the vocabulary holds as one piece and no other label has:
'not_equivalent' -> 'not_equivalent', 'not' (not 'equivalent', the other
label). Sub-word pieces never match
('entailment' is '▁', 'en', 'tail', 'ment': an 'en' neighbour says nothing
about the label). `label_match` lists the labels matched by any of the position's top-k
neighbours, in label order; the summary line counts the positions with one.

Bad input (a missing checkpoint, vocabulary or prompt, a prompt that is not
a .npy or a numpy checkpoint folder, a prompt whose embedding size differs
from the table's, a `--top_k` outside 1..vocabulary size, unknown labels) ends
with one line `pt-neighbors: error: ...` and exit status 1, before anything
is written; so does an --output_dir that cannot be written.
"""
import json
import os
from typing import Optional, Sequence

import numpy as np

from prompt_tuning.storage import file_utils
from prompt_tuning.storage import t5x_checkpoints
from prompt_tuning import tables

PROG = "pt-neighbors"
EMBEDDING_NAME = "token_embedder/embedding"
PROMPT_PARAM = "encoder/prompt/prompt"
PROMPT_FILENAME = "encoder.prompt.prompt.npy"
JSONL_NAME = "neighbors.jsonl"
MARKDOWN_NAME = "neighbors.md"
EPSILON = 1e-8
# tasks.features' default (T5's vocabulary, or $PT_VOCABULARY_PATH), repeated here
# because importing tasks.features imports seqio and TensorFlow (seconds).
DEFAULT_VOCABULARY_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
VOCABULARY_PATH_ENV = "PT_VOCABULARY_PATH"
WORD_START = "\u2581"  # SentencePiece's '▁'.


class NeighborsError(ValueError):
  """Bad input to pt-neighbors; the message says what to fix."""


# ------------------------------------------------------------------ inputs


def default_vocabulary_path() -> str:
  """$PT_VOCABULARY_PATH, else T5's SentencePiece model (as tasks.features)."""
  return os.environ.get(VOCABULARY_PATH_ENV) or DEFAULT_VOCABULARY_PATH


def load_prompt(path: str) -> np.ndarray:
  """The prompt [P, d] or SMoP prompts [k, P, d] (float32) from a .npy file or a
  numpy checkpoint folder (its encoder.prompt.prompt.npy, checked against the
  folder's checksums.json)."""
  if not path:
    raise NeighborsError("--prompt is required: a .npy prompt or a numpy checkpoint folder")
  if not file_utils.exists(path):
    raise NeighborsError(f"--prompt {path} does not exist")
  # pylint: disable-next=g-import-not-at-top  (flax: slow)
  from prompt_tuning.storage import numpy_checkpoints
  if os.path.isdir(path) or (file_utils.is_remote(path) and not path.endswith(".npy")):
    try:
      value = numpy_checkpoints.load_params(path, [PROMPT_PARAM])
    except t5x_checkpoints.CheckpointError as e:
      raise NeighborsError(f"--prompt {path}: {_first_line(e)}") from None
    value = value["encoder"]["prompt"]["prompt"]
  elif not path.endswith(".npy"):
    raise NeighborsError(f"--prompt {path} is not a .npy file (nor a numpy checkpoint folder "
                         f"holding {PROMPT_FILENAME})")
  else:
    try:
      numpy_checkpoints.check_file(path)  # against a checksums.json beside it, if any
      value = file_utils.load_npy(path)
    except t5x_checkpoints.CheckpointError as e:
      raise NeighborsError(f"--prompt {_first_line(e)}") from None
    except (ValueError, OSError, EOFError) as e:
      raise NeighborsError(f"--prompt {path} is not a readable .npy file "
                           f"({_first_line(e)})") from None
  value = np.asarray(value)
  if value.ndim not in (2, 3) or not np.issubdtype(value.dtype, np.floating):
    raise NeighborsError(f"--prompt {path} is {value.dtype} {list(value.shape)}: expected a "
                         "float prompt [P, d] or SMoP prompts [k, P, d]")
  if not np.all(np.isfinite(value)):
    raise NeighborsError(f"--prompt {path} contains NaN or infinite values")
  return value.astype(np.float32)


def load_vocabulary(path: str):
  """A sentencepiece.SentencePieceProcessor read from `path` (local or gs://)."""
  import sentencepiece  # pylint: disable=g-import-not-at-top
  if not path:
    raise NeighborsError("--vocabulary is empty: give the SentencePiece model (.model) file")
  try:
    if not file_utils.exists(path):
      raise NeighborsError(f"--vocabulary {path} does not exist")
    data = file_utils.read_bytes(path)
  except NeighborsError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (gs:// errors vary)
    raise NeighborsError(f"--vocabulary {path} cannot be read ({_first_line(e)})") from None
  processor = sentencepiece.SentencePieceProcessor()
  try:
    processor.LoadFromSerializedProto(data)
  except (RuntimeError, OSError, TypeError) as e:
    raise NeighborsError(f"--vocabulary {path} is not a SentencePiece model "
                         f"({_first_line(e)})") from None
  if processor.get_piece_size() < 1:
    raise NeighborsError(f"--vocabulary {path} has no pieces")
  return processor


def load_embedding(checkpoint_path: str) -> np.ndarray:
  """The frozen model's token embedding table [vocab, d] (float32)."""
  if not checkpoint_path:
    raise NeighborsError("--checkpoint is required: the frozen model's T5X checkpoint "
                         "(a checkpoint_<step> folder)")
  try:
    params = t5x_checkpoints.load_params(checkpoint_path, [EMBEDDING_NAME], dtype=np.float32)
  except t5x_checkpoints.CheckpointError as e:
    raise NeighborsError(_first_line(e)) from None
  table = np.asarray(params["token_embedder"]["embedding"])
  if table.ndim != 2:
    raise NeighborsError(f"{checkpoint_path}: {EMBEDDING_NAME} is {list(table.shape)}, "
                         "not a [vocab, d] table")
  return table


def task_labels(task: str, task_module: Optional[Sequence[str]]) -> list:
  """The class labels a task registered (prompt_tuning.tasks.labels)."""
  import importlib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.tasks import labels  # pylint: disable=g-import-not-at-top
  for module in task_module or ():
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise NeighborsError(f"--task_module {module!r} could not be imported: {e}") from None
  names = labels.get_class_labels(task)
  if not names:
    raise NeighborsError(
        f"--task {task!r} has no registered class labels (unknown task, or not a "
        "classification task; name its module with --task_module, e.g. "
        "prompt_tuning.tasks.super_glue, or give --class_labels=a,b)")
  return names


# ------------------------------------------------------------------ the computation


def _normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPSILON)


def nearest(vectors: np.ndarray, table: np.ndarray, top_k: int):
  """Top-k rows of `table` by cosine similarity to each of `vectors`.

  Args:
    vectors: [n, d].
    table: [V, d], the candidate rows (row index = token id).
    top_k: how many neighbours, 1..V.

  Returns:
    (ids [n, top_k] int64, similarities [n, top_k] float32), most similar
    first; equal similarities in increasing id order.
  """
  similarities = _normalize(vectors) @ _normalize(table).T
  ids = np.argsort(-similarities, axis=1, kind="stable")[:, :top_k]
  return ids.astype(np.int64), np.take_along_axis(similarities, ids, axis=1)


def _strip(piece: str) -> str:
  return piece.replace(WORD_START, "").lower()


def label_keys(processor, class_labels: Sequence[str]) -> list:
  """Per label, the stripped lowercased strings a neighbour piece must equal:
  the whole label, and each word of it (split at '_' and spaces) that the
  vocabulary encodes as a single piece and no other label has."""
  texts = [str(label).lower() for label in class_labels]
  words = [set(t.replace("_", " ").split()) - {t} for t in texts]
  keys = []
  for i, text in enumerate(texts):
    # A word another label also has (or is) would not tell the two apart.
    others = set().union(*(words[j] | {texts[j]} for j in range(len(texts)) if j != i))
    single = {w for w in words[i] - others
              if [p for p in map(_strip, processor.encode_as_pieces(w)) if p] == [w]}
    keys.append({text} | single)
  return keys


def match_labels(pieces: Sequence[str], class_labels: Sequence[str], keys: Sequence[set]) -> list:
  """The labels (in label order) matched by any of `pieces`."""
  stripped = {_strip(p) for p in pieces} - {""}
  return [label for label, k in zip(class_labels, keys) if stripped & k]


def compute(prompt: np.ndarray, table: np.ndarray, processor, top_k: int,
            class_labels: Optional[Sequence[str]] = None, prompt_name: str = "the prompt",
            checkpoint_name: str = "the checkpoint") -> list:
  """One record per prompt position (see the module docstring for the fields).

  Raises:
    NeighborsError: if the prompt's embedding size differs from the table's or
      `top_k` is not in 1..vocabulary size.
  """
  vocab_size = min(processor.get_piece_size(), table.shape[0])
  if prompt.shape[-1] != table.shape[1]:
    raise NeighborsError(
        f"{prompt_name} is {list(prompt.shape)} (embedding dim {prompt.shape[-1]}) but "
        f"{checkpoint_name}'s {EMBEDDING_NAME} is {list(table.shape)} (embedding dim "
        f"{table.shape[1]}): the prompt was trained for another model")
  if not 1 <= top_k <= vocab_size:
    raise NeighborsError(f"--top_k must be in 1..{vocab_size} (the vocabulary's pieces), "
                         f"got {top_k}")
  smop = prompt.ndim == 3
  prompts = prompt if smop else prompt[None]
  ids, sims = nearest(prompts.reshape(-1, prompts.shape[-1]), table[:vocab_size], top_k)
  keys = label_keys(processor, class_labels) if class_labels else None
  records = []
  for row, (row_ids, row_sims) in enumerate(zip(ids, sims)):
    j, i = divmod(row, prompts.shape[1])
    record = {"prompt": j} if smop else {}
    pieces = [processor.id_to_piece(int(t)) for t in row_ids]
    record.update(position=i, ids=[int(t) for t in row_ids], pieces=pieces,
                  similarities=[round(float(s), 6) for s in row_sims])
    if keys is not None:
      record["label_match"] = match_labels(pieces, class_labels, keys)
    records.append(record)
  return records


# ------------------------------------------------------------------ outputs


def _where(record: dict) -> str:
  if "prompt" in record:
    return f"{record['prompt']}/{record['position']}"
  return str(record["position"])


def summary(records: Sequence[dict], class_labels: Sequence[str], top_k: int) -> str:
  """One line: the positions with a class label among their top-k neighbours."""
  hits = [r for r in records if r.get("label_match")]
  what = "prompt/position" if records and "prompt" in records[0] else "position"
  listed = ", ".join(f"{_where(r)} ({', '.join(r['label_match'])})" for r in hits)
  return (f"label matches: {len(hits)} of {len(records)} positions have a class label "
          f"({', '.join(class_labels)}) among their top-{top_k} neighbours"
          + (f"; {what}: {listed}" if hits else ""))


def _cell(text: str) -> str:
  """A piece in a table cell ('|' is escaped by tables.markdown)."""
  return text.replace("\\", "\\\\").replace("`", "'")


def markdown(records: Sequence[dict], *, checkpoint: str, prompt: str, shape, top_k: int,
             vocab_size: int, class_labels: Optional[Sequence[str]]) -> str:
  """The readable table (and the label summary)."""
  smop = bool(records) and "prompt" in records[0]
  lines = [f"# Nearest vocabulary tokens of {prompt}", "",
           f"Prompt {list(shape)}; frozen model {checkpoint}; top {top_k} of the "
           f"vocabulary's {vocab_size} pieces by cosine similarity.", ""]
  if class_labels:
    lines += [summary(records, class_labels, top_k), ""]
  header = (["prompt"] if smop else []) + ["position", "neighbours (cosine similarity)"]
  if class_labels:
    header.append("label")
  rows = []
  for r in records:
    cells = [r["prompt"]] if smop else []
    cells.append(r["position"])
    cells.append(", ".join(f"`{_cell(p)}` {s:.3f}" for p, s in zip(r["pieces"],
                                                                   r["similarities"])))
    if class_labels:
      cells.append(", ".join(r["label_match"]))
    rows.append(cells)
  return "\n".join(lines + [tables.markdown(header, rows)]) + "\n"


def run(*, checkpoint: str, prompt: str, top_k: int, output_dir: str, vocabulary: str,
        class_labels: Optional[Sequence[str]] = None, task: Optional[str] = None,
        task_module: Optional[Sequence[str]] = None) -> str:
  """Checks every input, computes the neighbours and writes both files.

  Returns:
    The markdown table.

  Raises:
    NeighborsError: bad input (nothing is written then).
  """
  missing = [f"--{name}" for name, value in (("checkpoint", checkpoint), ("prompt", prompt),
                                              ("output_dir", output_dir)) if not value]
  if missing:
    raise NeighborsError(f"missing {', '.join(missing)}: give --checkpoint (the frozen model's "
                         "T5X checkpoint), --prompt (a .npy or numpy checkpoint folder) and "
                         "--output_dir (where to write neighbors.jsonl and neighbors.md)")
  if top_k <= 0:
    raise NeighborsError(f"--top_k must be a positive number of neighbours, got {top_k}")
  if class_labels and task:
    raise NeighborsError("give --class_labels or --task, not both")
  if task_module and not task:
    raise NeighborsError("--task_module needs --task (the task whose class labels to use)")
  processor = load_vocabulary(vocabulary)
  value = load_prompt(prompt)
  table = load_embedding(checkpoint)
  if task:
    class_labels = task_labels(task, task_module)
  class_labels = [str(label) for label in class_labels or ()]
  if any(not label.strip() for label in class_labels):
    raise NeighborsError(f"--class_labels has an empty label: {class_labels}")
  records = compute(value, table, processor, top_k, class_labels,
                    prompt_name=f"--prompt {prompt}", checkpoint_name=f"--checkpoint {checkpoint}")
  text = markdown(records, checkpoint=checkpoint, prompt=prompt, shape=value.shape,
                  top_k=top_k, vocab_size=min(processor.get_piece_size(), table.shape[0]),
                  class_labels=class_labels)
  made = not file_utils.exists(output_dir)
  written = []
  try:
    file_utils.makedirs(output_dir)
    for name, content in ((JSONL_NAME, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                for r in records)), (MARKDOWN_NAME, text)):
      file_utils.write_text_atomic(os.path.join(output_dir, name), content)
      written.append(name)
  except OSError as e:  # Not a folder, no permission, disk full, ...
    # Nothing half-written stays: the files of this call, and the folder it made.
    for name in written:
      file_utils.remove_tree(os.path.join(output_dir, name))
    if made and not file_utils.listdir(output_dir):
      file_utils.remove_tree(output_dir)
    raise NeighborsError(f"--output_dir {output_dir} cannot be written ({_first_line(e)})"
                         ) from None
  return text


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__
