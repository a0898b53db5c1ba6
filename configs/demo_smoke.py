"""A seconds-scale end-to-end check of every step of the demo (not a result): the demo's runs for
4 steps of 4 rows, 4 test utterances, one point per sweep."""

from llada_jax.demo.config import DemoConfig


def config() -> DemoConfig:
  return DemoConfig(num_train=16, num_dev=4, num_test=4, vocab_size=None, gen_length=16,
                    decode_steps=16, block_length=8, steps_sweep=(8,), ratio_sweep=(0.5,),
                    train_set=("batch_size=4", "steps=4", "optimizer.warmup_steps=1",
                               "eval_every=1", "save_every=1", "log_every=1"))
