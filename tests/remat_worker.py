"""Loss and trainable gradients of test_remat's model under every remat
policy, computed with XLA's default flags (run by test_remat in a process of
its own): `python remat_worker.py OUT.npz`."""
import dataclasses
import sys

import flax.linen as nn
import jax
import numpy as np

import helpers  # pylint: disable=g-bad-import-order
from prompt_tuning import methods
from prompt_tuning.methods import prompts
from prompt_tuning.model import encoder_decoder
from prompt_tuning.model import t5
from prompt_tuning.storage import trees

TINY = helpers.tiny_config(dropout_rate=0.1, remat_policy="none")
SITES = methods.Methods(lora=methods.LoRAMethod(rank=2),
                        adapters=methods.AdapterMethod(bottleneck=4, sublayers=("mlp",)))
POLICIES = ("none", "layer", "matmuls", "auto")


def model(policy):
  config = dataclasses.replace(TINY, remat_policy=policy)
  return encoder_decoder.EncoderDecoderModel(t5.Transformer(
      config, prompt=prompts.Prompt(length=3, init=nn.initializers.normal(1.0)), sites=SITES))


def main(out):
  params = helpers.perturbed_params(model("none"))
  arrays = {f"params/{k}": np.asarray(v) for k, v in trees.flatten(params).items()}
  for policy in POLICIES:
    loss, grads = helpers.loss_and_grads(model(policy), params,
                                         dropout_rng=jax.random.PRNGKey(3))
    arrays[f"{policy}/loss"] = np.asarray(loss)
    arrays.update({f"{policy}/grads/{k}": np.asarray(v)
                   for k, v in trees.flatten(grads).items()})
  np.savez(out, **arrays)


if __name__ == "__main__":
  main(sys.argv[1])
