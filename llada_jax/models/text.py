"""Text side: tokenizer, Diffusion-ASR's chat prompt, response encoding and decoding (WER:
evaluation.wer).

The prompt is the chat template of the user message "Transcribe the audio:" with the assistant
header (LLaDA: `<|startoftext|><|start_header_id|>user<|end_header_id|>\\n\\n…<|eot_id|>
<|start_header_id|>assistant<|end_header_id|>\\n\\n`); the audio embeddings follow it, then the
response. Transcripts reach the LM in one form per model (`TEXT_FORMS`): "raw", as the corpus writes
them (Diffusion-ASR trains on the raw LibriSpeech annotation, upper case, and feeds first-pass
hypotheses as they are), or "normalized" (lower case, no punctuation but apostrophes: the demo's
choice). Training targets and deliberation inputs both use the model's form.
"""

from __future__ import annotations

import json
import re
import typing as tp
from pathlib import Path

PROMPT = "Transcribe the audio:"


# tokenizer_config.json classes that are transformers' generic fast tokenizer (as our checkpoints
# and LLaDA-8B-Instruct name it): AutoTokenizer would build that same class from tokenizer.json.
GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(path: str | Path):
  """The LM's own tokenizer from a folder holding tokenizer.json (a converted checkpoint).

  A folder whose tokenizer_config.json names the generic fast tokenizer gets that class directly:
  importing AutoTokenizer loads transformers' model configs (and torch, where it is installed),
  seconds of every process that loads a checkpoint. Any other class goes through AutoTokenizer."""
  path = Path(path)
  if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
    raise FileNotFoundError(f"{path}: no tokenizer.json / tokenizer_config.json")
  if (path / "tokenizer.json").is_file() and _tokenizer_class(path) in GENERIC_TOKENIZERS:
    from transformers import TokenizersBackend

    return TokenizersBackend.from_pretrained(str(path))
  from transformers import AutoTokenizer

  return AutoTokenizer.from_pretrained(str(path))


def _tokenizer_class(path: Path) -> str | None:
  try:
    return json.loads((path / "tokenizer_config.json").read_text()).get("tokenizer_class")
  except (OSError, ValueError, AttributeError):
    return None  # no or unreadable config: AutoTokenizer decides (and names what is wrong)


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


TEXT_FORMS = ("raw", "normalized")
_PUNCT = re.compile(r"[^a-z0-9' ]+")


def normalize(text: str) -> str:
  """Lower case, punctuation but apostrophes dropped, single spaces."""
  return " ".join(_PUNCT.sub(" ", text.lower()).split())


def in_form(text: str, form: str) -> str:
  """`text` as the model reads it: as written ("raw") or `normalize`d ("normalized")."""
  if form == "raw":
    return text
  if form == "normalized":
    return normalize(text)
  raise ValueError(f"text form {form!r}: expected one of {TEXT_FORMS}")


def token_ids(tokenizer, text: str, form: str = "raw") -> list[int]:
  """`text` in `form`, tokenized without special tokens (Diffusion-ASR:
  `tokenizer(text, add_special_tokens=False)`, for labels and first-pass hypotheses alike)."""
  return list(tokenizer(in_form(text, form), add_special_tokens=False)["input_ids"])


def decode_response(tokenizer, ids: tp.Sequence[int], eos_id: int) -> str:
  """Text of a standalone response, cut at its first EOS (Diffusion-ASR's EOS rule makes every
  later position EOS, so this equals their `batch_decode(skip_special_tokens=True)`)."""
  ids = [int(i) for i in ids]
  if eos_id in ids:
    ids = ids[: ids.index(eos_id)]
  return tokenizer.decode(ids, skip_special_tokens=True).strip()


def decode_all(tokenizer, ids: tp.Sequence[int]) -> str:
  """Text of a whole response with every special token dropped: Diffusion-ASR decodes a
  deliberation output this way (`batch_decode(skip_special_tokens=True)`), so an EOS committed
  mid-sentence disappears and the words after it stay."""
  return tokenizer.decode([int(i) for i in ids], skip_special_tokens=True).strip()
