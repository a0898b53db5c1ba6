"""The text side against Diffusion-ASR's recipes, on a tokenizer with LLaDA-8B-Instruct's chat
template and special tokens (`add_bos_token: false`)."""

import pytest
from support import same_as_autotokenizer

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


def test_a_checkpoint_tokenizer_loads_as_autotokenizer_would_without_torch(tmp_path):
  """The generic fast tokenizer is built directly (AutoTokenizer's import brings in torch where
  it is installed, seconds per process): the same class, ids and template; a model's own class
  named in tokenizer_config.json still comes from AutoTokenizer."""
  import json
  import subprocess
  import sys

  llada_tokenizer.build(tmp_path, ["HELLO", "WORLD", "it's", "done"], vocab_size=64)
  same_as_autotokenizer(tmp_path, "HELLO WORLD it's done, HELLO")
  probe = ("import sys; from llada_jax.models import text; text.load_tokenizer(sys.argv[1]); "
           "print(sorted(m for m in ('torch', 'transformers.configuration_utils') "
           "if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True,
                       text=True, check=True).stdout
  assert out.strip() == "[]"

  config = json.loads((tmp_path / "tokenizer_config.json").read_text())
  config["tokenizer_class"] = "GPT2Tokenizer"
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  assert type(text.load_tokenizer(tmp_path)).__name__ == "GPT2Tokenizer"
