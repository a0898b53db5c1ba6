"""Evaluation (eval.py): data → a Transcriber → hyps.jsonl + summary.json (WER, RTF), and the demo's
report (paired-bootstrap intervals of WER changes)."""

from llada_jax.evaluation.cli import evaluate, main, parse_args
from llada_jax.evaluation.inputs import EvalError
from llada_jax.evaluation.runner import RunSettings, run

__all__ = ["EvalError", "RunSettings", "evaluate", "main", "parse_args", "run"]
