"""Parity on the machine at hand (CUDA when there is one): our LM vs transformers'
LlamaForCausalLM, and our exact diffusion decode vs the PyTorch loop of `bench_decode.py`.

  python benchmarks/parity_device.py [--layers 30] [--vocab 49152]

For fp32, JAX runs with `jax_default_matmul_precision=highest` and PyTorch with TF32 off, so both
compute true fp32 products. Weights ×1 and ×5 (the benchmark's peaked logits), fp32 and bf16.
Prints one line per setting: max |logit diff|, top-1 agreement, decoded tokens equal.
"""

from __future__ import annotations

import argparse
import sys

import bench_decode as bd  # a sibling script: python puts benchmarks/ on the path first
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llada_jax.decoding import DiffusionSettings, decode


def main(argv=None) -> int:
  import torch

  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--layers", type=int, default=30)
  p.add_argument("--vocab", type=int, default=49152)
  p.add_argument("--gen-length", type=int, default=32)
  args = p.parse_args(argv)
  device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  g = args.gen_length
  for dtype in ("float32", "bfloat16"):
    for scale in (1.0, 5.0):
      model = bd.build(argparse.Namespace(layers=args.layers, vocab=args.vocab, scale=scale,
                                          dtype=dtype), causal=False)
      ref = bd.torch_llama(model.lm, device)
      mel = jax.random.normal(jax.random.key(1), (1, 80, 1000))
      prompt = jax.random.randint(jax.random.key(2), (1, bd.PROMPT_LEN), 0, args.vocab - 1)
      with jax.default_matmul_precision("highest" if dtype == "float32" else "default"):
        prefix = nnx.jit(lambda m, p, x: m.prefix_embeds(p, x))(model, prompt, mel)
        x = torch.from_numpy(np.array(prefix.astype(jnp.float32))).to(device, ref.dtype)
        t = x.shape[1]
        mask = torch.zeros(1, 1, t, t, dtype=ref.dtype, device=device)
        with torch.inference_mode():
          want = ref(inputs_embeds=x, attention_mask=mask).logits.float().cpu().numpy()
          theirs = bd.torch_transcribe(ref, x, g, g, g, model.config.lm.mask_id).cpu().numpy()[0]
        got = np.asarray(model.lm(embeds=prefix), np.float32)
        ours = np.asarray(decode(model, mel, prompt,
                                 settings=DiffusionSettings(g, g, g, eos_rule=False)))[0]
      print(f"{device} {dtype} weights ×{scale:g}: max |logit diff| {np.abs(want - got).max():.3g} "
            f"(max |logit| {np.abs(want).max():.3g}); top-1 agree "
            f"{100 * (want.argmax(-1) == got.argmax(-1)).mean():.1f} %; exact-diffusion tokens "
            f"equal {(ours == theirs).sum()}/{g}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
