"""One process of tests/test_multihost.py's bucket-agreement test: joins
`jax.distributed`, cuts a batch whose real lengths differ by process with
data.fit_batch, and prints the shapes it got as one JSON line."""
import argparse
import json

import numpy as np

from prompt_tuning import cli
from prompt_tuning import data


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--distributed", action="store_true")
  parser.add_argument("--coordinator_address")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  args = parser.parse_args()
  cli.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  import jax  # pylint: disable=g-import-not-at-top
  me = jax.process_index()
  # Process p's rows hold 10 + 30 p input tokens and 3 + 2 p targets, of 64 / 8.
  inputs = np.zeros((2, 64), np.int32)
  inputs[:, :10 + 30 * me] = 5
  targets = np.zeros((2, 8), np.int32)
  targets[:, :3 + 2 * me] = 7
  batch = {"encoder_input_tokens": inputs, "decoder_target_tokens": targets,
           "decoder_input_tokens": targets,
           "decoder_loss_weights": (targets > 0).astype(np.float32)}
  local = data.fit_batch(batch, data.Padding(mode="buckets"), multihost=False)
  agreed = data.fit_batch(batch, data.Padding(mode="buckets"))
  print(json.dumps({"process": me,
                    "local": {k: list(v.shape) for k, v in sorted(local.items())},
                    "agreed": {k: list(v.shape) for k, v in sorted(agreed.items())}}), flush=True)


if __name__ == "__main__":
  main()
