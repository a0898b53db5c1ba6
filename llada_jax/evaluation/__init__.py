"""Evaluation: data → a Transcriber → hyps.jsonl + summary.json (WER as the authors score, RTF)."""

from llada_jax.evaluation.inputs import EvalError
from llada_jax.evaluation.runner import RunSettings, run

__all__ = ["EvalError", "RunSettings", "run"]
