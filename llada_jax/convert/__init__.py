"""Checkpoint conversion: read foreign checkpoints (`sources`) and map them into our models."""
