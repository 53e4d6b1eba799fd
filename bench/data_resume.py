"""Time to bring the train data to step N on resume: replay vs restore.

    python bench/data_resume.py --superglue_data_dir ../shared/data/fewglue \
        --vocabulary ../shared/data/t5_vocab/spiece.model --examples 10000 50000

For each N (= examples / batch), on the data pipeline pt-train uses
(data.get_dataset, after data.first_batch as in trainer.train), prints one
JSON row: the seconds to replay N batches (the fallback, and what every resume
did before), the old `skip(N)` path, the seconds to restore the saved iterator
state, the size of that state, and whether the next batches agree.
"""
import argparse
import json
import time

import numpy as np
import seqio

from prompt_tuning import data
from prompt_tuning.training import data_state


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--task", default="super_glue_rte_v102")
  parser.add_argument("--module", default="prompt_tuning.tasks.super_glue")
  parser.add_argument("--superglue_data_dir")
  parser.add_argument("--vocabulary", help="a SentencePiece model (default: the tasks' own)")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--examples", type=int, nargs="+", default=[10000, 50000])
  args = parser.parse_args(argv)
  vocab = (seqio.SentencePieceVocabulary(args.vocabulary, extra_ids=100)
           if args.vocabulary else None)
  data.configure_sources(vocab, args.superglue_data_dir)
  data.import_task_modules(args.module)
  lengths = {"inputs": args.inputs, "targets": args.targets}

  def dataset():
    ds = data.get_dataset(args.task, lengths, "train", args.batch, seed=args.seed)
    data.first_batch(ds, args.task)  # as trainer.train does
    return ds

  rows = []
  for examples in args.examples:
    steps = examples // args.batch
    name = data_state.prefix(0, 1)
    replayed = data_state.TrainIterator(dataset())
    t = time.time()
    assert replayed.advance(steps) == steps
    replay_s = time.time() - t
    t = time.time()
    files = replayed.state_files(name)
    save_s = time.time() - t
    t = time.time()
    skipped = dataset().skip(steps).as_numpy_iterator()
    want = next(skipped)
    skip_s = time.time() - t
    ds = dataset()
    data_state.TrainIterator(ds)  # the spare iterator trainer makes for a fallback
    restored = data_state.TrainIterator(ds)
    t = time.time()
    assert restored.restore(name, files) is None
    got = next(restored)
    restore_s = time.time() - t
    same = all(np.array_equal(want[k], got[k]) for k in want) and all(
        np.array_equal(want[k], v) for k, v in next(replayed).items())
    row = {"task": args.task, "batch": args.batch, "steps": steps,
           "examples": steps * args.batch, "replay_s": round(replay_s, 2),
           "skip_s": round(skip_s, 2), "restore_s": round(restore_s, 3),
           "save_s": round(save_s, 3),
           "state_bytes": {k: len(v) for k, v in files.items()},
           "same_next_batch": bool(same)}
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


if __name__ == "__main__":
  main()
