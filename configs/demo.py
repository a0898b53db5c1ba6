"""`make demo`: the paper's experiment in miniature on a 2-core CPU in ~25 minutes (see
llada_jax/demo/config.py for the fields, configs/demo_llama.py and demo_llada.py for the two
runs)."""

from llada_jax.demo.config import DemoConfig


def config() -> DemoConfig:
  return DemoConfig(llama="demo_llama", llada="demo_llada", llada_from_ar=True, num_train=3000,
                    num_dev=32, num_test=100, max_words=12, vocab_size=1000, gen_length=24,
                    decode_steps=24, block_length=8, eval_batch=8, steps_sweep=(6, 12),
                    ratio_sweep=(0.1, 0.5))
