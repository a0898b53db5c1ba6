"""The authors' inference, end to end: a tiny random Whisper-LLaDA saved as a Diffusion-ASR `.pth`
over tiny base models, converted with tools/convert.py and decoded with eval.py, gives the texts
of a PyTorch reference written line by line from their `models/WhisperLLaDA.py` (`generate`,
`transcribe`, `transcribe_correction`) and `inference.py`: standalone diffusion and semi-AR
decoding with the EOS rule, deliberation with random and low-confidence masking, diffusion and
semi-AR sub-blocks, and their `batch_decode(skip_special_tokens=True)` post-processing — on every
utterance, including ones where an EOS is committed mid-response.

Random masking is drawn from the same noise as ours (their `torch.randperm(L)[:k]` is a uniformly
random k-subset, as the k lowest of L uniform scores are), so the reference takes our subset.
"""

import copy
import json
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import transformers
from support import llada_dir, tiny_llama, tiny_whisper

from llada_jax.cli import convert as convert_cli
from llada_jax.cli import eval as eval_cli
from llada_jax.decoding.scores import MASKING_SCORES, row_uniform
from llada_jax.models import text
from llada_jax.testing import llada_tokenizer
from llada_jax.testing.torch_diffusion_asr import TheirTrainedParts

pytestmark = pytest.mark.slow

MASK, EOS = 95, 1  # the tiny LLaDA's mask and EOS ids (support.llada_dir)
WINDOW = 17  # round(1500 * 0.333333 / 30) encoder frames
UTTS = 6
SCALE = 6.0  # the tiny LLaDA's weights ×SCALE
OFTEN = "w33"  # a word the tiny LLaDA proposes often
WORDS = [f"w{i}" for i in range(40)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("dasr")
  whisper_hf = tiny_whisper(tmp / "whisper")
  llama = tiny_llama(tmp / "hf")
  llada_tokenizer.build(tmp / "tok", WORDS, vocab_size=96)
  often = text.load_tokenizer(tmp / "tok").convert_tokens_to_ids(OFTEN)
  with torch.no_grad():  # larger weights: peaked distributions, no near-ties across frameworks
    for name, p in llama.named_parameters():
      if "norm" not in name:
        p.mul_(SCALE)
    # EOS wins wherever a frequent word would, by a clear margin: EOS mid-response happens
    llama.lm_head.weight[EOS] = 1.1 * llama.lm_head.weight[often]
  llada = llada_dir(tmp / "llada", llama)
  llada_tokenizer.build(llada, WORDS, vocab_size=96)
  parts = TheirTrainedParts()  # hidden 32, width 32 (= whisper d), out 32 (= LLaDA d), r 8, α 32
  torch.save({"model": parts.module.state_dict(), "epoch": 1}, tmp / "theirs.pth")
  assert convert_cli.main(["--kind", "whisper_llada", "--src", str(tmp / "theirs.pth"),
                           "--whisper", str(tmp / "whisper"), "--llm", str(llada), "--out",
                           str(tmp / "ckpt"), "--qformer-heads", "4"]) == 0

  # A LibriSpeech-layout folder of 1 s utterances (the tiny Whisper's whole window)
  rng = np.random.default_rng(0)
  chapter = tmp / "data" / "1" / "10"
  chapter.mkdir(parents=True)
  lines, first = [], {}
  for i in range(UTTS):
    utt = f"1-10-{i:04d}"
    sf.write(chapter / f"{utt}.flac", 0.1 * rng.standard_normal(16000), 16000, subtype="PCM_16")
    lines.append(f"{utt} {' '.join(rng.choice(WORDS, 5))}")
    first[utt] = " ".join(rng.choice(WORDS, 6 + 2 * i))
  (chapter / "1-10.trans.txt").write_text("\n".join(lines) + "\n")
  (tmp / "first.jsonl").write_text("".join(
      json.dumps({"id": k, "ref": "", "hyp": v}) + "\n" for k, v in first.items()))
  return {"tmp": tmp, "ckpt": tmp / "ckpt", "data": tmp / "data", "first": first,
          "whisper": whisper_hf, "llama": llama, "parts": parts,
          "tokenizer": text.load_tokenizer(llada)}


class TheirModel:
  """Their WhisperLLaDA at inference: Whisper encoder, window Q-Former + linear_proj, LLaDA with
  PEFT LoRA on q/k/v (merged: W + B·A·α/r), bidirectional, prompt and audio spliced."""

  def __init__(self, s):
    self.encoder = s["whisper"].model.encoder.eval()
    self.parts, self.tok = s["parts"], s["tokenizer"]
    self.lm = copy.deepcopy(s["llama"]).eval()
    with torch.no_grad():
      for i, layer in enumerate(self.lm.model.layers):
        for proj in ("q_proj", "k_proj", "v_proj"):
          linear = getattr(layer.self_attn, proj)
          eye = torch.eye(linear.in_features)
          linear.weight += self.parts.lora(i, proj, eye).T
    self.fe = transformers.WhisperFeatureExtractor(feature_size=80)
    turns = [{"role": "user", "content": "Transcribe the audio:"}]
    prompt = self.tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    self.prompt = torch.tensor([self.tok(prompt)["input_ids"]])  # _get_prompt_embeddings

  def embed(self, ids):
    return self.lm.get_input_embeddings()(ids)

  def logits(self, x_emb):
    b, t, _ = x_emb.shape
    full = torch.ones(b, 1, t, t, dtype=torch.bool)  # LLaDA: no attention mask, both ways
    return self.lm(inputs_embeds=x_emb, attention_mask=full).logits

  def feature(self, audio: np.ndarray):
    # inference.py: audio[:sr*30], WhisperFeatureExtractor pads to 30 s; the tiny Whisper's
    # window is 1 s, whose frames are the first 100 of the 30 s log-mel
    mel = self.fe(audio, sampling_rate=16000, return_tensors="pt")["input_features"][..., :100]
    with torch.no_grad():
      enc = self.encoder(mel).last_hidden_state
    return self.parts.audio_features(enc, WINDOW)


def num_transfer_tokens(mask_index, steps):
  mask_num = mask_index.sum(dim=1, keepdim=True)
  base, remainder = mask_num // steps, mask_num % steps
  out = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
  for i in range(mask_num.size(0)):
    out[i, :remainder[i]] += 1
  return out


@torch.no_grad()
def transcribe(m: TheirModel, feature, steps, gen_length, block_length):
  """WhisperLLaDA.generate(mode="decoding") → transcribe, temperature 0, low-confidence."""
  prompt = m.prompt
  p, a = prompt.shape[1], feature.shape[1]
  x = torch.full((1, p + a + gen_length), 0, dtype=torch.long)
  x[:, :p] = prompt
  x[:, p + a:] = MASK
  x_emb = torch.cat([m.embed(prompt), feature, m.embed(torch.full((1, gen_length), MASK))], 1)
  early_stop = False
  num_blocks = gen_length // block_length
  steps = steps // num_blocks
  for nb in range(num_blocks):
    block_mask_index = x[:, p + a + nb * block_length:p + a + (nb + 1) * block_length] == MASK
    ntt = num_transfer_tokens(block_mask_index, steps)
    for i in range(steps):
      mask_index = x == MASK
      if not mask_index.any():
        early_stop = True
        break
      logits = m.logits(x_emb)
      x0 = torch.argmax(logits, dim=-1)
      x0_p = torch.gather(F.softmax(logits, dim=-1), -1, x0.unsqueeze(-1)).squeeze(-1)
      x0_p[:, p + a + (nb + 1) * block_length:] = -np.inf
      x0 = torch.where(mask_index, x0, x)
      confidence = torch.where(mask_index, x0_p, -np.inf)
      transfer = torch.zeros_like(x0, dtype=torch.bool)
      _, select = torch.topk(confidence[0], k=int(ntt[0, i]))
      transfer[0, select] = True
      x[transfer] = x0[transfer]
      eos_mask = transfer & (x0 == EOS)
      pos = eos_mask.nonzero(as_tuple=True)[1]
      if pos.numel():
        x[:, pos[0].item():] = EOS
        early_stop = True
      x_emb[:, p + a:, :] = m.embed(x[:, p + a:])
    if early_stop:
      break
  return x[:, p + a:]


def _denoise(m, x, x_emb, p, a, steps, ntt):
  for i in range(steps):
    mask_index = x == MASK
    if not mask_index.any():
      break
    logits = m.logits(x_emb)
    x0 = torch.argmax(logits, dim=-1)
    x0_p = torch.gather(F.softmax(logits, dim=-1), -1, x0.unsqueeze(-1)).squeeze(-1)
    x0 = torch.where(mask_index, x0, x)
    confidence = torch.where(mask_index, x0_p, -np.inf)
    transfer = torch.zeros_like(x0, dtype=torch.bool)
    if ntt[0, i] > 0:
      _, select = torch.topk(confidence[0], k=int(ntt[0, i]))
      transfer[0, select] = True
    x[transfer] = x0[transfer]
    x_emb[:, p + a:, :] = m.embed(x[:, p + a:])


@torch.no_grad()
def transcribe_correction(m: TheirModel, feature, supervision: str, steps, mask_ratio,
                          confidence_based, num_chunks, strategy, random_subset):
  """WhisperLLaDA.transcribe_correction, temperature 0, low-confidence remasking; `random_subset`
  replaces `torch.randperm(gen_length)[:k]` (see the module docstring)."""
  prompt = m.prompt
  p, a = prompt.shape[1], feature.shape[1]
  supervision_ids = torch.tensor([m.tok(supervision, add_special_tokens=False)["input_ids"]])
  gen_length = supervision_ids.shape[1]
  if strategy == "diffusion":
    response = supervision_ids.clone()
    k = int(gen_length * mask_ratio)
    if confidence_based:
      pads = m.embed(torch.full((1, gen_length), m.tok.pad_token_id))
      probs = F.softmax(m.logits(torch.cat([m.embed(prompt), feature, pads], 1))[:, p + a:], -1)
      conf = torch.gather(probs, -1, supervision_ids.unsqueeze(-1)).squeeze(-1)
      _, low = torch.topk(conf[0], k=k, largest=False)
      response[0, low] = MASK
    else:
      response[0, random_subset(gen_length, k)] = MASK
    x = torch.full((1, p + a + gen_length), 0, dtype=torch.long)
    x[:, :p] = prompt
    x[:, p + a:] = response
    x_emb = torch.cat([m.embed(prompt), feature, m.embed(response)], 1)
    steps = min(steps, int((x == MASK).sum()))
    _denoise(m, x, x_emb, p, a, steps, num_transfer_tokens(x == MASK, steps))
    return x[:, p + a:]
  chunk = gen_length // num_chunks
  for c in range(num_chunks):
    start, end = c * chunk, gen_length if c == num_chunks - 1 else (c + 1) * chunk
    response = supervision_ids.clone()
    response[0, start:end] = MASK
    x = torch.full((1, p + a + gen_length), 0, dtype=torch.long)
    x[:, :p] = prompt
    x[:, p + a:] = response
    x_emb = torch.cat([m.embed(prompt), feature, m.embed(response)], 1)
    chunk_steps = steps // num_chunks
    _denoise(m, x, x_emb, p, a, chunk_steps, num_transfer_tokens(x == MASK, chunk_steps))
    supervision_ids[:, start:end] = x[:, p + a + start:p + a + end]
  return supervision_ids


def our_subset(utt: str, seed: int = 0):
  """Our random masking's subset for `utt` (LLaDATranscriber's row key, MaskedSubset's scores)."""
  key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(utt.encode()) & 0x7FFFFFFF)

  def subset(length, k):
    scores = np.asarray(row_uniform(key, jnp.int32(0), MASKING_SCORES, jnp.arange(length)))
    return torch.from_numpy(np.argsort(scores, kind="stable")[:k].copy())

  return subset


def _ours(s, name, *args) -> dict[str, str]:
  out = s["tmp"] / name
  assert eval_cli.main(["--quiet", "--checkpoint", str(s["ckpt"]), "--data", str(s["data"]),
                        "--out", str(out), "--batch-size", "4", *map(str, args)]) == 0
  rows = [json.loads(ln) for ln in (out / "hyps.jsonl").read_text().splitlines()]
  assert all("error" not in r for r in rows), rows
  return {r["id"]: r["hyp"] for r in rows}


def _audio(s) -> dict[str, np.ndarray]:
  return {p.stem: sf.read(p, dtype="float32")[0] for p in sorted(s["data"].rglob("*.flac"))}


@pytest.mark.parametrize("block", [32, 16])
def test_standalone_decoding_matches_their_transcribe(setup, block):
  s = setup
  m = TheirModel(s)
  ours = _ours(s, f"decode{block}", "--strategy", "diffusion" if block == 32 else "semi_ar",
               "--gen-length", 32, "--steps", 32, "--block-length", block)
  eos_early = 0
  for utt, audio in _audio(s).items():
    out = transcribe(m, m.feature(audio), steps=32, gen_length=32, block_length=block)
    eos_early += int((out[0] == EOS).any() and not (out[0] == EOS).all())
    assert ours[utt] == m.tok.batch_decode(out, skip_special_tokens=True)[0].strip(), utt
  assert eos_early, "no utterance stopped at an EOS: the EOS rule went untested"


@pytest.mark.parametrize("strategy, masking", [("diffusion", "random"),
                                               ("diffusion", "low_confidence"),
                                               ("semi_ar", "random")])
def test_deliberation_matches_their_transcribe_correction(setup, strategy, masking):
  s = setup
  m = TheirModel(s)
  ours = _ours(s, f"delib_{strategy}_{masking}", "--strategy", "deliberation", "--first-pass",
               s["tmp"] / "first.jsonl", "--deliberation-strategy", strategy, "--masking",
               masking, "--mask-ratio", 0.3, "--num-chunks", 4, "--steps", 16)
  mid_eos = 0
  for utt, audio in _audio(s).items():
    out = transcribe_correction(m, m.feature(audio), s["first"][utt], steps=16, mask_ratio=0.3,
                                confidence_based=masking == "low_confidence", num_chunks=4,
                                strategy=strategy, random_subset=our_subset(utt))
    row = out[0].tolist()
    mid_eos += EOS in row and any(t != EOS for t in row[row.index(EOS):])
    assert ours[utt] == m.tok.batch_decode(out, skip_special_tokens=True)[0].strip(), utt
  if strategy == "diffusion" and masking == "random":
    assert mid_eos, "no EOS committed mid-response: the post-processing went untested"
