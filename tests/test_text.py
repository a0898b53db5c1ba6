"""The text side against Diffusion-ASR's recipes, on a tokenizer with LLaDA-8B-Instruct's chat
template and special tokens (`add_bos_token: false`)."""

import pytest

from llada_jax.models import text
from llada_jax.testing import llada_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  folder = tmp_path_factory.mktemp("llada_tok")
  ids = llada_tokenizer.build(folder, ["HELLO", "WORLD", "it's", "done"], vocab_size=64)
  return text.load_tokenizer(folder), ids


def test_prompt_ids_are_the_authors(tok):
  """WhisperLLaDA._get_prompt_embeddings: `tokenizer(apply_chat_template(…, tokenize=False))`."""
  tokenizer, ids = tok
  turns = [{"role": "user", "content": "Transcribe the audio:"}]
  theirs = tokenizer(tokenizer.apply_chat_template(turns, add_generation_prompt=True,
                                                   tokenize=False))["input_ids"]
  ours = text.prompt_ids(tokenizer)
  assert ours == theirs
  assert ours.count(ids["bos"]) == 1 and ours[0] == ids["bos"]  # one <|startoftext|>, no extra
  pieces = tokenizer.convert_ids_to_tokens(ours)
  assert pieces == ["<|startoftext|>", "<|start_header_id|>", "user", "<|end_header_id|>", "\n\n",
                    "Transcribe", "the", "audio:", "<|eot_id|>", "<|start_header_id|>",
                    "assistant", "<|end_header_id|>", "\n\n"]


def test_text_forms_and_token_ids(tok):
  tokenizer, _ = tok
  assert text.in_form("HELLO, WORLD!", "raw") == "HELLO, WORLD!"
  assert text.in_form("HELLO, WORLD! It's", "normalized") == "hello world it's"
  assert text.token_ids(tokenizer, "HELLO WORLD") == \
      tokenizer("HELLO WORLD", add_special_tokens=False)["input_ids"]
  with pytest.raises(ValueError, match="text form"):
    text.in_form("x", "lower")


def test_deliberation_output_keeps_words_after_a_mid_response_eos(tok):
  """Diffusion-ASR decodes deliberation with `batch_decode(skip_special_tokens=True)`; standalone
  decoding's EOS rule makes everything after the first EOS EOS, so cutting there is the same."""
  tokenizer, ids = tok
  hello, world = tokenizer("HELLO WORLD", add_special_tokens=False)["input_ids"]
  row = [hello, ids["eos"], world, ids["eos"], ids["eos"]]
  theirs = tokenizer.batch_decode([row], skip_special_tokens=True)[0]
  assert text.decode_all(tokenizer, row) == theirs.strip() == "HELLO WORLD"
  assert text.decode_response(tokenizer, row, ids["eos"]) == "HELLO"
  standalone = [hello, world, ids["eos"], ids["eos"]]
  assert text.decode_response(tokenizer, standalone, ids["eos"]) == \
      tokenizer.batch_decode([standalone], skip_special_tokens=True)[0].strip()
