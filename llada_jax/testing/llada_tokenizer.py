"""A tiny tokenizer with LLaDA-8B-Instruct's special tokens, chat template and settings.

LLaDA-8B-Instruct's tokenizer_config.json has `add_bos_token: false` and a Llama-3-style template
that writes `<|startoftext|>` itself; EOS and pad are `<|endoftext|>`; `<|mdm_mask|>` is the mask.
Tests build this one over a small word vocabulary so the prompt, the EOS rule and the text
post-processing can be checked against the authors' recipes without the 126k-token original.
"""

from __future__ import annotations

from pathlib import Path

# LLaDA-8B-Instruct's chat template (Llama 3's, with its BOS token).
CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}")
# id: token, in LLaDA's order (BOS before EOS); the mask is the last id of the vocabulary.
SPECIALS = ("<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>")
MASK = "<|mdm_mask|>"


def build(out: str | Path, words: list[str], vocab_size: int) -> dict[str, int]:
  """Save a word-level tokenizer of exactly `vocab_size` ids to `out` (tokenizer.json +
  tokenizer_config.json): the specials, `words` (plus filler), "\\n\\n", the mask last.
  Returns the special ids by name (bos, eos, start_header, end_header, eot, mask)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  body = ["\n\n", "user", "assistant", "Transcribe", "the", "audio:"]
  body += [w for w in dict.fromkeys(words) if w not in body]
  room = vocab_size - len(SPECIALS) - 1 - 1  # specials, <unk>, the mask
  if len(body) > room:
    raise ValueError(f"{len(body)} words do not fit a vocabulary of {vocab_size}")
  body += [f"w{i}" for i in range(room - len(body))]
  vocab = {t: i for i, t in enumerate([*SPECIALS, "<unk>", *body, MASK])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
  tok.add_special_tokens([*SPECIALS, MASK])
  tok.add_tokens(["\n\n"])  # matched before whitespace splitting, as Llama 3's "ĊĊ" token
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>",
                                 eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                 unk_token="<unk>", add_bos_token=False, add_eos_token=False)
  fast.chat_template = CHAT_TEMPLATE
  fast.save_pretrained(str(out))
  return {"bos": vocab[SPECIALS[0]], "eos": vocab[SPECIALS[1]], "start_header": vocab[SPECIALS[2]],
          "end_header": vocab[SPECIALS[3]], "eot": vocab[SPECIALS[4]], "mask": vocab[MASK]}
