"""Training: config, objectives, the sharded step, checkpoints and the loop behind train.py."""
