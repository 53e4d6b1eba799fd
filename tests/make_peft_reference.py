"""Reference adapters and scores from Hugging Face PEFT (PyTorch), for
tests/test_peft_interop.py.

Writes, for a tiny random T5 1.1 (make_hf_reference's 't5_1_1' with as many
decoder as encoder layers, since PEFT sizes T5 prefixes by the encoder's):

  tests/testdata/peft_reference/{name}/adapter_config.json
  tests/testdata/peft_reference/{name}/adapter_model.safetensors
        written by PEFT's own save_pretrained, adapter weights random (LoRA's B
        too, so the adapters change the outputs)
  tests/testdata/peft_reference/reference.npz
        the frozen T5X-layout params, inputs, targets, and for each adapter
        PEFT's teacher-forced logits and summed target log-likelihoods and
        greedy outputs (see `scores`), computed by the model PEFT reloads from
        the folder (`PeftModel.from_pretrained`, eval mode, float32)

Adapters: lora_qv (r 2, alpha 4, q and v: PEFT's T5 default targets),
lora_all_rslora (r 3, every projection, rsLoRA scaling), prompt (3 virtual
tokens, seq2seq default num_transformer_submodules 2), prefix (3 virtual
tokens) and prefix_projection (reparameterised, saved folded by PEFT).

Needs torch, transformers and peft (not dependencies of the project):

  python tests/make_peft_reference.py            # writes the files
  python tests/make_peft_reference.py --check    # compares, writes nothing
  python tests/make_peft_reference.py --score DIR [--name prompt]
        # PEFT's scores for an adapter folder DIR (e.g. one pt-export-peft
        # wrote) on the reference inputs, compared with the stored ones
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_hf_reference as mhr  # pylint: disable=g-import-not-at-top,wrong-import-position

OUT = os.path.join(mhr.TESTDATA, "peft_reference")
CONFIG = dict(mhr.CONFIGS["t5_1_1"], num_decoder_layers=2)
DECODE_STEPS = 4


def peft_configs():
  # pylint: disable-next=g-import-not-at-top
  from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType
  seq2seq = TaskType.SEQ_2_SEQ_LM
  inner = CONFIG["heads"] * CONFIG["head_dim"]
  return {
      "lora_qv": LoraConfig(task_type=seq2seq, r=2, lora_alpha=4, target_modules=["q", "v"]),
      "lora_all_rslora": LoraConfig(task_type=seq2seq, r=3, lora_alpha=5, use_rslora=True,
                                    target_modules=["q", "k", "v", "o", "wi_0", "wi_1", "wo"]),
      "prompt": PromptTuningConfig(task_type=seq2seq, num_virtual_tokens=3),
      "prefix": PrefixTuningConfig(task_type=seq2seq, num_virtual_tokens=3, token_dim=inner,
                                   num_attention_heads=CONFIG["heads"]),
      "prefix_projection": PrefixTuningConfig(
          task_type=seq2seq, num_virtual_tokens=3, token_dim=inner,
          num_attention_heads=CONFIG["heads"], prefix_projection=True, encoder_hidden_size=8),
  }


def base_model(params):
  return mhr._load_into_hf(params, CONFIG)  # pylint: disable=protected-access


def randomize(model, seed):
  """Random adapter weights (PEFT initialises LoRA's B to zero)."""
  import torch  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.requires_grad:
        p.copy_(0.5 * torch.randn(p.shape, generator=gen))


def scores(model, inputs):
  """PEFT's teacher-forced logits [B, T, V] and log-likelihoods [B]; greedy
  ids by PEFT's forward one token at a time (`greedy`, zero after EOS); and
  what PEFT's `generate` returns (`generate`).

  The two greedy results differ for prefix tuning: with transformers 5.24,
  PEFT 0.21.2's generate() loses the prefix (transformers builds its own
  cache and ignores the past_key_values PEFT passes, as its warning says),
  so it returns the frozen model's outputs. `greedy` is what the adapter
  computes.
  """
  import torch  # pylint: disable=g-import-not-at-top
  input_ids = torch.from_numpy(inputs["input_ids"].astype(np.int64))
  mask = (input_ids > 0).long()
  targets = inputs["targets"]
  with torch.no_grad():
    out = model(input_ids=input_ids, attention_mask=mask,
                decoder_input_ids=torch.from_numpy(mhr.shift_right(targets).astype(np.int64)))
    logits = out.logits.float().numpy()
    generated = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                               num_beams=1, max_new_tokens=DECODE_STEPS, min_new_tokens=0)
    tokens = np.zeros((len(input_ids), 1), np.int64)  # start id 0
    done = np.zeros(len(input_ids), bool)
    for _ in range(DECODE_STEPS):
      step = model(input_ids=input_ids, attention_mask=mask,
                   decoder_input_ids=torch.from_numpy(tokens)).logits[:, -1].argmax(-1).numpy()
      step = np.where(done, 0, step)
      done |= step == mhr.EOS_ID
      tokens = np.concatenate([tokens, step[:, None]], 1)
  generated = generated.numpy()[:, 1:]  # drop the start id 0
  generated = np.pad(generated, ((0, 0), (0, DECODE_STEPS - generated.shape[1])))
  # pylint: disable-next=protected-access
  return dict(logits=logits, target_loglik=mhr._target_loglik(logits, targets),
              greedy=tokens[:, 1:].astype(np.int32), generate=generated.astype(np.int32))


def load_adapter(params, folder):
  from peft import PeftModel  # pylint: disable=g-import-not-at-top
  model = PeftModel.from_pretrained(base_model(params), folder)
  model.eval()
  return model


def build(out_dir):
  import torch  # pylint: disable=g-import-not-at-top
  from peft import get_peft_model  # pylint: disable=g-import-not-at-top
  import peft  # pylint: disable=g-import-not-at-top
  params = mhr.make_params(CONFIG)
  inputs = mhr.make_inputs(CONFIG)
  arrays = {"param:" + k: v for k, v in params.items()}
  arrays["config_json"] = np.array(json.dumps(CONFIG, sort_keys=True))
  arrays["input_ids"] = inputs["input_ids"].astype(np.int32)
  arrays["targets"] = inputs["targets"].astype(np.int32)
  arrays["versions"] = np.array(json.dumps({"peft": peft.__version__,
                                            "torch": torch.__version__}))
  for seed, (name, config) in enumerate(sorted(peft_configs().items())):
    torch.manual_seed(seed)
    model = get_peft_model(base_model(params), config)
    randomize(model, seed)
    folder = os.path.join(out_dir, name)
    if os.path.exists(folder):
      shutil.rmtree(folder)
    model.save_pretrained(folder)
    for extra in set(os.listdir(folder)) - {"adapter_config.json", "adapter_model.safetensors"}:
      os.remove(os.path.join(folder, extra))  # the model card
    reloaded = load_adapter(params, folder)
    for key, value in scores(reloaded, inputs).items():
      arrays[f"{name}:{key}"] = value
    # The adapter matters: the outputs differ from the frozen model's.
    plain = mhr.hf_outputs(params, CONFIG, inputs["input_ids"],
                           np.zeros((0, CONFIG["emb"]), np.float32), inputs["targets"])
    assert np.abs(plain["logits"] - arrays[f"{name}:logits"]).max() > 1e-2, name
  return arrays


def load_reference(path=os.path.join(OUT, "reference.npz")):
  """(flat_params, config, arrays) of the stored reference."""
  with np.load(path, allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  config = json.loads(str(arrays.pop("config_json")))
  params = {k[len("param:"):]: arrays.pop(k) for k in list(arrays) if k.startswith("param:")}
  return params, config, arrays


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true")
  parser.add_argument("--score", help="an adapter folder to score with PEFT")
  parser.add_argument("--name", help="with --score: the reference adapter to compare with")
  args = parser.parse_args(argv)
  if args.score:
    params, _, stored = load_reference()
    inputs = {"input_ids": stored["input_ids"], "targets": stored["targets"]}
    got = scores(load_adapter(params, args.score), inputs)
    print(json.dumps({k: v.tolist() for k, v in got.items() if k != "logits"}))
    if args.name:
      for key in ("logits", "target_loglik"):
        np.testing.assert_allclose(got[key], stored[f"{args.name}:{key}"], atol=1e-5, rtol=0)
      np.testing.assert_array_equal(got["greedy"], stored[f"{args.name}:greedy"])
      print(f"{args.score}: PEFT scores it as the stored {args.name}")
    return
  if args.check:
    tmp = os.path.join(OUT, "_check")
    arrays = build(tmp)
    shutil.rmtree(tmp)
    _, _, stored = load_reference()
    for key, value in arrays.items():
      if ":" in key and not key.startswith("param:"):
        np.testing.assert_allclose(stored[key], value, atol=1e-5, rtol=0, err_msg=key)
    print("matches")
    return
  os.makedirs(OUT, exist_ok=True)
  arrays = build(OUT)
  np.savez(os.path.join(OUT, "reference.npz"), **arrays)
  print(f"wrote {OUT}")


if __name__ == "__main__":
  main()
