"""Text side: tokenizer, Diffusion-ASR's chat prompt, response encoding (WER: evaluation.wer).

The prompt is the chat template of the user message "Transcribe the audio:" with the assistant
header (LLaDA: `<|startoftext|><|start_header_id|>user<|end_header_id|>\\n\\n…<|eot_id|>
<|start_header_id|>assistant<|end_header_id|>\\n\\n`); the audio embeddings follow it, then the
response. Responses are transcripts in one canonical form (`normalize`): lower case, no punctuation
but apostrophes. Training targets and first-pass hypotheses handed to deliberation both pass through
it, so the LM never sees a style at test time that it was not trained on.
"""

from __future__ import annotations

import re
import typing as tp
from pathlib import Path

import numpy as np

PROMPT = "Transcribe the audio:"


def load_tokenizer(path: str | Path):
  """The LM's own tokenizer from a folder holding tokenizer.json (a converted checkpoint)."""
  from transformers import AutoTokenizer

  path = Path(path)
  if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
    raise FileNotFoundError(f"{path}: no tokenizer.json / tokenizer_config.json")
  return AutoTokenizer.from_pretrained(str(path))


def prompt_ids(tokenizer, text: str = PROMPT, system: str | None = None) -> list[int]:
  """Chat-templated user turn + assistant header, as Diffusion-ASR builds it; with `system`, a
  system turn first (else the template's default, if it has one)."""
  if getattr(tokenizer, "chat_template", None):
    turns = [{"role": "user", "content": text}]
    if system is not None:
      turns.insert(0, {"role": "system", "content": system})
    ids = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
      ids = ids["input_ids"]
    return [int(i) for i in ids]
  if system:
    text = f"{system}\n{text}"
  return list(tokenizer(text, add_special_tokens=True)["input_ids"])


_PUNCT = re.compile(r"[^a-z0-9' ]+")


def normalize(text: str) -> str:
  """Canonical transcript form for LM targets and deliberation inputs."""
  return " ".join(_PUNCT.sub(" ", text.lower()).split())


def hypothesis_ids(tokenizer, hyp: str, length: int) -> list[int]:
  """A first-pass hypothesis as deliberation reads it: `normalize`d, at most `length` tokens."""
  return tokenizer(normalize(hyp), add_special_tokens=False)["input_ids"][:length]


def encode_response(tokenizer, text: str, length: int, eos_id: int) -> tuple[np.ndarray, int]:
  """Token ids of `normalize(text)` + EOS, padded with EOS to `length` (Diffusion-ASR trains the
  padding EOS too). Returns (ids [length], number of real tokens incl. the first EOS)."""
  ids = tokenizer(normalize(text), add_special_tokens=False)["input_ids"][: length - 1]
  n = len(ids) + 1
  return np.asarray(ids + [eos_id] * (length - len(ids)), np.int32), n


def decode_response(tokenizer, ids: tp.Sequence[int], eos_id: int) -> str:
  """Text of a response, cut at its first EOS."""
  ids = [int(i) for i in ids]
  if eos_id in ids:
    ids = ids[: ids.index(eos_id)]
  return tokenizer.decode(ids, skip_special_tokens=True).strip()
