"""Extractive QA data: SQuAD v1.1 and the MRQA 2019 sets, from TFDS or the official files.

Both sources give one example per question with the same features, whichever
way they read:

    {'id': tf.string, 'question': tf.string, 'context': tf.string,
     'answers': tf.string [n]}      (every gold answer, in file order)

* `SquadSource` reads TFDS `squad/v1.1:3.0.0` (splits train, validation) or,
  from `data_dir`, the official `train-v1.1.json` / `dev-v1.1.json`
  (`{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
  "answers": [{"text", "answer_start"}]}]}]}]}`), as the TFDS builder reads
  them: texts verbatim, a question id seen twice gets the answers of both.
* `MrqaSource` reads TFDS `mrqa/<config>:1.0.0` or, from `data_dir`, the
  official MRQA 2019 JSONL files (gzipped or not) in the layout of the release
  (https://s3.us-east-2.amazonaws.com/mrqa/release/v2/...):
  `<data_dir>/train/<File>.jsonl.gz` and `<data_dir>/dev/<File>.jsonl.gz`. The
  first line is a header `{"header": {"dataset": ..., "split": ...}}`, then
  one line per context `{"context": ..., "qas": [{"qid", "question",
  "answers": [...], "detected_answers": [...]}, ...]}`; as the TFDS builder
  does, context and question are stripped of surrounding whitespace and
  `answers` (all gold answers) is kept as is.

The MRQA out-of-domain sets exist only as dev files (TFDS split `test`): they
are exposed as the split `validation`, pt-eval's default. Reading never
downloads: missing TFDS data or a missing file raise FileNotFoundError saying
where the data was looked for and how to get it.
"""
import abc
import contextlib
import dataclasses
import gzip
import io
import json
import os
from typing import Iterator, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.storage import file_utils
from prompt_tuning.tasks import sources

SQUAD_TFDS_NAME = "squad/v1.1:3.0.0"
SQUAD_FILES = {"train": "train-v1.1.json", "validation": "dev-v1.1.json"}
SQUAD_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset/"
MRQA_TFDS_VERSION = "1.0.0"
MRQA_URL = "https://s3.us-east-2.amazonaws.com/mrqa/release/v2"
# The release folder of each split.
MRQA_RELEASE_DIRS = {"train": "train", "validation": "dev"}

# How a user points the sources at the files, for error messages.
_SET_SQUAD_DIR = ("--gin.SQUAD_DATA_DIR (or $" + sources.SQUAD_DATA_DIR_ENV
                  + ", or registration.configure(squad_data_dir=...))")
_SET_MRQA_DIR = ("--gin.MRQA_DATA_DIR (or $" + sources.MRQA_DATA_DIR_ENV
                 + ", or registration.configure(mrqa_data_dir=...))")

FEATURES = {
    "id": tf.TensorSpec([], tf.string),
    "question": tf.TensorSpec([], tf.string),
    "context": tf.TensorSpec([], tf.string),
    "answers": tf.TensorSpec([None], tf.string),
}


@dataclasses.dataclass(frozen=True)
class MrqaSet:
  """One MRQA 2019 dataset.

  Attributes:
    tfds_config: its TFDS `mrqa` config.
    release_name: its file name in the release, without '.jsonl.gz'.
    in_domain: True for the six training sets (splits train and validation),
      False for the six out-of-domain sets (validation only: the dev files).
  """
  tfds_config: str
  release_name: str
  in_domain: bool

  @property
  def splits(self) -> tuple[str, ...]:
    return ("train", "validation") if self.in_domain else ("validation",)

  @property
  def tfds_splits(self) -> dict[str, str]:
    """Our split -> the TFDS split (the out-of-domain dev sets are TFDS 'test')."""
    if self.in_domain:
      return {"train": "train", "validation": "validation"}
    return {"validation": "test"}


# Short name (as in the task names) -> dataset.
MRQA_SETS = {
    "squad": MrqaSet("squad", "SQuAD", True),
    "newsqa": MrqaSet("news_qa", "NewsQA", True),
    "triviaqa": MrqaSet("trivia_qa", "TriviaQA-web", True),
    "searchqa": MrqaSet("search_qa", "SearchQA", True),
    "hotpotqa": MrqaSet("hotpot_qa", "HotpotQA", True),
    "naturalquestions": MrqaSet("natural_questions", "NaturalQuestionsShort", True),
    "bioasq": MrqaSet("bio_asq", "BioASQ", False),
    "drop": MrqaSet("drop", "DROP", False),
    "duorc": MrqaSet("duo_rc", "DuoRC.ParaphraseRC", False),
    "race": MrqaSet("race", "RACE", False),
    "relation_extraction": MrqaSet("relation_extraction", "RelationExtraction", False),
    "textbookqa": MrqaSet("textbook_qa", "TextbookQA", False),
}


# ------------------------------------------------------------------ readers


@contextlib.contextmanager
def _open_text(path: str):
  """A text stream (local or gs://) of a file, gunzipped when it is gzip (by its magic bytes)."""
  # Through the project's storage layer (a local disk or gs://).
  with (io.BytesIO(file_utils.read_bytes(path)) if file_utils.is_remote(path)
        else open(path, "rb")) as raw:
    if raw.read(2) == b"\x1f\x8b":
      raw.seek(0)
      with gzip.GzipFile(fileobj=raw) as unzipped:
        yield io.TextIOWrapper(unzipped, encoding="utf-8")
      return
    raw.seek(0)
    yield io.TextIOWrapper(raw, encoding="utf-8")


def read_mrqa_header(path: str) -> dict:
  """The `header` object of an MRQA file; ValueError when the first line is not one."""
  try:
    with _open_text(path) as f:
      line = f.readline()
    header = json.loads(line)["header"]
    if not isinstance(header, dict):
      raise TypeError("not an object")
  except (ValueError, KeyError, TypeError, OSError, EOFError) as e:
    raise ValueError(
        f"{path} is not an MRQA file: its first line must be the header "
        f"{{\"header\": {{\"dataset\": ..., \"split\": ...}}}} ({type(e).__name__}: {e})"
    ) from None
  return header


def read_mrqa(path: str) -> Iterator[dict]:
  """One example per question of an MRQA 2019 JSONL(.gz) file.

  Yields:
    {'id': qid, 'question': stripped question, 'context': stripped context,
     'answers': [gold answers]}, in file order.

  Raises:
    ValueError: for a file without the header line, or a line that is not a
      context with its questions (the message names the file and line).
  """
  read_mrqa_header(path)
  with _open_text(path) as f:
    next(f)  # The header.
    for number, line in enumerate(f, start=2):
      if not line.strip():
        continue
      try:
        paragraph = json.loads(line)
        context = paragraph["context"].strip()
        for qa in paragraph["qas"]:
          yield {"id": str(qa["qid"]), "question": qa["question"].strip(),
                 "context": context, "answers": [str(a) for a in qa["answers"]]}
      except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} line {number} is not an MRQA context with its questions "
                         f"({type(e).__name__}: {e})") from None


def read_squad(path: str) -> Iterator[dict]:
  """One example per question of an official SQuAD v1.1 JSON file (as TFDS reads it).

  Yields:
    {'id', 'question', 'context', 'answers': [answer texts]}; a question id
    that occurs twice yields one example with the answers of both.

  Raises:
    ValueError: when the file is not SQuAD's JSON (the message names it).
  """
  try:
    articles = json.loads(file_utils.read_bytes(path).decode("utf-8"))["data"]
    questions = {}
    for article in articles:
      for paragraph in article["paragraphs"]:
        for qa in paragraph["qas"]:
          answers = [a["text"] for a in qa["answers"]]
          if qa["id"] in questions:
            questions[qa["id"]]["answers"].extend(answers)
          else:
            questions[qa["id"]] = {"id": qa["id"], "question": qa["question"],
                                   "context": paragraph["context"], "answers": answers}
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path} is not a SQuAD v1.1 JSON file ({type(e).__name__}: {e})") from None
  yield from questions.values()


def examples_to_dataset(examples_fn) -> tf.data.Dataset:
  """A tf.data.Dataset of FEATURES from `examples_fn()` (an iterator of dicts).

  Read into memory, as the SuperGLUE files are (superglue_jsonl): a dataset of
  in-memory tensors can be checkpointed, so pt-train saves its position with
  each checkpoint and a resume replays nothing (a generator-fed dataset
  cannot be, and every resume re-read the stream up to its step). Memory grows
  with the file: the largest official one, MRQA's SearchQA train (about 117k
  questions, contexts cut to 800 tokens), is of the order of 1 GB.
  """
  examples = list(examples_fn())
  strings = lambda values: tf.constant(values, tf.string, shape=[len(values)])
  columns = {name: strings([ex[name] for ex in examples]) for name in ("id", "question", "context")}
  columns["answers"] = tf.RaggedTensor.from_row_lengths(
      strings([a for ex in examples for a in ex["answers"]]),
      tf.constant([len(ex["answers"]) for ex in examples], tf.int64, shape=[len(examples)]))
  ds = tf.data.Dataset.from_tensor_slices(columns)
  # A row of the ragged column arrives as a RaggedTensor; FEATURES has it dense.
  return ds.map(lambda ex: dict(ex, answers=ex["answers"].to_tensor()
                                if isinstance(ex["answers"], tf.RaggedTensor) else ex["answers"]))


# ------------------------------------------------------------------ sources


class _QaSource(seqio.DataSource):
  """Examples with FEATURES from TFDS, or from the official files in `data_dir`."""

  def __init__(self, tfds_name: str, tfds_splits: Mapping[str, str],
               data_dir: Optional[str], tfds_data_dir: Optional[str], hint: str):
    self._data_dir = os.fspath(data_dir) if data_dir else None
    self._tfds_name = tfds_name
    self._tfds = sources.PreparedTfdsSource(tfds_name, splits=dict(tfds_splits),
                                            tfds_data_dir=tfds_data_dir, hint=hint)
    super().__init__(splits=tuple(tfds_splits))

  @property
  def data_dir(self) -> Optional[str]:
    """The folder of the official files read, or None when reading TFDS."""
    return self._data_dir

  @property
  def tfds_name(self) -> str:
    return self._tfds_name

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def __repr__(self):
    return (f"{self.__class__.__name__}(data_dir={self._data_dir!r}, "
            f"tfds={self._tfds_name})")

  @abc.abstractmethod
  def file_path(self, split: str) -> str:
    """The official file of `split` in `data_dir` (it need not exist)."""

  @abc.abstractmethod
  def _read(self, path: str) -> Iterator[dict]:
    """The examples (dicts of FEATURES) of an official file."""

  @abc.abstractmethod
  def _missing(self, path: str, split: str) -> str:
    """The error message for a missing file: where to get it."""

  @abc.abstractmethod
  def _from_tfds(self, x):
    """A TFDS example as FEATURES (in tf.data.Dataset.map)."""

  def _check_split(self, split: str) -> None:
    if split not in self.splits:
      raise ValueError(f"{self._tfds_name} has no split {split!r}; splits: {self.splits}.")

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None,
                  *, sequence_length: Optional[Mapping[str, int]] = None,
                  use_cached: bool = False,
                  num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # Unused.
    self._check_split(split)
    if self._data_dir is None:
      ds = self._tfds.get_dataset(split=split, shuffle=shuffle, seed=seed,
                                  shard_info=shard_info)
      return ds.map(self._from_tfds, num_parallel_calls=tf.data.AUTOTUNE)
    path = self.file_path(split)
    if not file_utils.exists(path):
      raise FileNotFoundError(self._missing(path, split))
    self._check_file(path)  # A wrong file fails here, not inside tf.data.
    # The examples come in file order; seqio's Task shuffles them.
    ds = examples_to_dataset(lambda: self._read(path))
    if shard_info and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    return ds

  def _check_file(self, path: str) -> None:
    """Raises ValueError when the file is clearly not in the official format
    (called before reading it, so the error is one clear line)."""
    del path  # Only parsing the whole file tells (SQuAD's one JSON document).

  def list_shards(self, split: str) -> Sequence[str]:
    if self._data_dir is None:
      return self._tfds.list_shards(split)
    return [self.file_path(split)]

  def num_input_examples(self, split: str) -> Optional[int]:
    if self._data_dir is None:
      return self._tfds.num_input_examples(split)
    return None  # Unknown without reading the file.


class SquadSource(_QaSource):
  """SQuAD v1.1: TFDS `squad/v1.1:3.0.0`, or the official JSON files in `data_dir`."""

  def __init__(self, data_dir: Optional[str] = None, tfds_data_dir: Optional[str] = None):
    """Constructor.

    Args:
      data_dir: folder with `train-v1.1.json` and `dev-v1.1.json`; None reads TFDS.
      tfds_data_dir: optional TFDS data dir (else seqio's override / TFDS's).
    """
    super().__init__(
        SQUAD_TFDS_NAME, {"train": "train", "validation": "validation"}, data_dir,
        tfds_data_dir,
        hint=(f"; or, without TFDS, set {_SET_SQUAD_DIR} to a folder with the official "
              f"{' and '.join(SQUAD_FILES.values())} ({SQUAD_URL})"))

  def file_path(self, split: str) -> str:
    self._check_split(split)
    return os.path.join(self._data_dir or "", SQUAD_FILES[split])

  def _read(self, path: str) -> Iterator[dict]:
    return read_squad(path)

  def _missing(self, path: str, split: str) -> str:
    return (f"SQuAD file {path} not found: set {_SET_SQUAD_DIR} to a folder with the "
            f"official {SQUAD_FILES[split]} ({SQUAD_URL}{SQUAD_FILES[split]}), or unset it "
            f"to read TFDS {SQUAD_TFDS_NAME}.")

  def _from_tfds(self, x):
    return {"id": x["id"], "question": x["question"], "context": x["context"],
            "answers": x["answers"]["text"]}


class MrqaSource(_QaSource):
  """One MRQA 2019 set: TFDS `mrqa/<config>:1.0.0`, or its official JSONL(.gz) in `data_dir`."""

  def __init__(self, name: str, data_dir: Optional[str] = None,
               tfds_data_dir: Optional[str] = None):
    """Constructor.

    Args:
      name: a key of MRQA_SETS, e.g. 'bioasq'.
      data_dir: the release folder (train/<File>.jsonl.gz, dev/<File>.jsonl.gz,
        or the same unzipped as .jsonl); None reads TFDS.
      tfds_data_dir: optional TFDS data dir (else seqio's override / TFDS's).
    """
    if name not in MRQA_SETS:
      raise ValueError(f"Unknown MRQA set {name!r}; known: {sorted(MRQA_SETS)}.")
    self._name = name
    self._set = MRQA_SETS[name]
    files = ", ".join(self._relative(s) + ".gz" for s in self._set.splits)
    super().__init__(
        f"mrqa/{self._set.tfds_config}:{MRQA_TFDS_VERSION}", self._set.tfds_splits, data_dir,
        tfds_data_dir,
        hint=(f"; or, without TFDS, set {_SET_MRQA_DIR} to a folder with the official "
              f"MRQA files ({files}, from {MRQA_URL}/)"))

  @property
  def name(self) -> str:
    return self._name

  def _relative(self, split: str) -> str:
    return f"{MRQA_RELEASE_DIRS[split]}/{self._set.release_name}.jsonl"

  def file_path(self, split: str) -> str:
    """`<data_dir>/<train|dev>/<File>.jsonl.gz`, or the `.jsonl` when only that exists."""
    self._check_split(split)
    path = os.path.join(self._data_dir or "", self._relative(split))
    return path if file_utils.exists(path) else path + ".gz"

  def _read(self, path: str) -> Iterator[dict]:
    return read_mrqa(path)

  def _check_file(self, path: str) -> None:
    read_mrqa_header(path)

  def _missing(self, path: str, split: str) -> str:
    return (f"MRQA file {path} not found (nor without .gz): set {_SET_MRQA_DIR} to a folder "
            f"with the official MRQA files ({MRQA_URL}/{self._relative(split)}.gz), or unset "
            f"it to read TFDS {self._tfds_name}.")

  def _from_tfds(self, x):
    return {"id": x["qid"], "question": x["question"], "context": x["context"],
            "answers": x["answers"]}
