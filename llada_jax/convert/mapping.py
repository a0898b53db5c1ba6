"""Name mapping between checkpoint formats and our NNX models.

A table of `Rule`s maps source tensor names (regex patterns with `{i}` for a layer index) to our
parameter paths and a named, invertible transform. The same table drives import (source → ours) and
export (ours → source). Every mismatch — missing, unexpected, wrong shape — is collected and
reported together, naming each tensor; nothing is written on failure.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing as tp

import numpy as np
from flax import nnx

from llada_jax.models import stacked
from llada_jax.models.layers import Buffer


class MappingError(ValueError):
  """Source tensors do not fit the target model; the message lists every problem."""


def _transpose(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.swapaxes(x, -1, -2))


def _conv_to_ours(x: np.ndarray) -> np.ndarray:  # torch Conv1d [out, in, k] → lax [k, in, out]
  return np.ascontiguousarray(np.transpose(x, (2, 1, 0)))


def _conv_to_torch(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(x, (2, 1, 0)))


TRANSFORMS: dict[str, tuple[tp.Callable, tp.Callable]] = {
    "identity": (lambda x: x, lambda x: x),
    "transpose": (_transpose, _transpose),
    "conv": (_conv_to_ours, _conv_to_torch),
}


@dataclasses.dataclass(frozen=True)
class Rule:
  source: str  # e.g. "model.layers.{i}.self_attn.q_proj.weight"
  target: str  # e.g. "layers.{i}.self_attn.q_proj.kernel"
  transform: str = "identity"

  def __post_init__(self):
    if self.transform not in TRANSFORMS:
      raise ValueError(f"Rule {self.source}: unknown transform {self.transform!r}")

  # Compiled once per rule: every tensor of a checkpoint is matched against the whole table.
  @functools.cached_property
  def source_re(self) -> re.Pattern:
    return re.compile(_pattern(self.source))

  @functools.cached_property
  def target_re(self) -> re.Pattern:
    return re.compile(_pattern(self.target))


def _pattern(template: str) -> str:
  return "^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$"


@dataclasses.dataclass(frozen=True)
class Mapping:
  """A rule table plus source names to ignore on purpose (documented per table)."""

  rules: tuple[Rule, ...]
  skip: tuple[str, ...] = ()  # regexes of source tensors that the model does not use

  def to_target(self, name: str) -> tuple[str, Rule] | None:
    return self._translate(name, forward=True)

  def to_source(self, target: str) -> tuple[str, Rule] | None:
    return self._translate(target, forward=False)

  def _translate(self, name: str, *, forward: bool) -> tuple[str, Rule] | None:
    for rule in self.rules:
      m = (rule.source_re if forward else rule.target_re).match(name)
      if m:
        template = rule.target if forward else rule.source
        return (template.replace("{i}", m.group("i")) if "{i}" in template else template), rule
    return None

  def skipped(self, name: str) -> bool:
    return any(re.search(p, name) for p in self.skip)

  def under(self, prefix: str) -> Mapping:
    """The same table for a model nested at `prefix` (e.g. "lm.")."""
    return Mapping(tuple(Rule(r.source, prefix + r.target, r.transform) for r in self.rules),
                   self.skip)

  def __add__(self, other: Mapping) -> Mapping:
    return Mapping(self.rules + other.rules, self.skip + other.skip)


class TensorSource(tp.Protocol):
  def keys(self) -> tp.Iterable[str]: ...
  def get(self, name: str) -> np.ndarray: ...


Targets = dict[str, tuple[tuple[int, ...], tp.Any]]


def check(source: TensorSource, mapping: Mapping, targets: Targets, *, what: str = "checkpoint"
          ) -> list[tuple[str, str, Rule]]:
  """Match every source tensor to a target; raise one MappingError listing every problem.

  `targets` maps each expected target name to (shape, dtype). Returns the (source, target, rule)
  plan. Shapes are checked from the source's header when it can tell them without loading.
  """
  plan, errors, seen = [], [], set()
  for name in source.keys():
    if mapping.skipped(name):
      continue
    hit = mapping.to_target(name)
    if hit is None:
      errors.append(f"unexpected tensor {name!r} (no rule maps it)")
      continue
    target, rule = hit
    if target not in targets:
      errors.append(f"tensor {name!r} maps to {target!r}, which the model does not have")
      continue
    if target in seen:
      errors.append(f"tensor {name!r}: {target!r} is written twice")
      continue
    seen.add(target)
    plan.append((name, target, rule))
  for target in sorted(set(targets) - seen):
    back = mapping.to_source(target)
    errors.append(f"missing tensor {back[0] if back else '?'!r} for {target!r}")
  shape_of = getattr(source, "shape", None)
  if shape_of is not None:
    for name, target, rule in plan:
      src_shape = tuple(shape_of(name))
      expected = _source_shape(targets[target][0], rule)
      if src_shape != expected:
        errors.append(f"shape mismatch for {name!r}: checkpoint {src_shape}, model expects "
                      f"{expected} (as {target!r} {tuple(targets[target][0])})")
  if errors:
    raise MappingError(f"{what}: {len(errors)} problem(s):\n  " + "\n  ".join(errors))
  return plan


def convert(source: TensorSource, mapping: Mapping, targets: Targets,
            sink: tp.Callable[[str, np.ndarray], None], *, what: str = "checkpoint") -> None:
  """Stream every source tensor through `mapping` into `sink(target_name, array)`, one at a time,
  cast to the target dtype. Nothing reaches the sink unless `check` passes for the whole source."""
  for name, target, rule in check(source, mapping, targets, what=what):
    array = TRANSFORMS[rule.transform][0](np.asarray(source.get(name)))
    if tuple(array.shape) != tuple(targets[target][0]):
      raise MappingError(f"{what}: shape mismatch for {name!r}: converted {array.shape}, model "
                         f"expects {tuple(targets[target][0])} ({target!r})")
    sink(target, array.astype(targets[target][1], copy=False))


# Everything a checkpoint holds except LoRA adapters: parameters plus buffers (Whisper's sinusoidal
# position table), which load from checkpoints but are never trained.
BASE_WEIGHTS = nnx.Any(nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)), Buffer)


def model_targets(model: nnx.Module, kinds=BASE_WEIGHTS
                  ) -> dict[str, tuple[tuple[int, ...], tp.Any]]:
  """{target name: (shape, dtype)} of the model's weights of `kinds` (base weights by default)."""
  state = nnx.state(model, kinds)
  flat = dict(nnx.to_flat_state(state))
  # Layer stacks are named per layer, as in the source checkpoints (stacked.per_layer_names).
  return {name: (stacked.layer_shape(flat[key]), flat[key].dtype)
          for name, (key, _) in stacked.per_layer_names(state).items()}


def load_into(model: nnx.Module, source: TensorSource, mapping: Mapping, *, kinds=BASE_WEIGHTS,
              what: str = "checkpoint") -> nnx.Module:
  """Fill `model`'s weights from `source` in place (all-or-nothing)."""
  state = nnx.state(model, kinds)
  arrays: dict[str, np.ndarray] = {}
  convert(source, mapping, model_targets(model, kinds), arrays.__setitem__, what=what)
  stacked.assign(state, arrays.items())
  nnx.update(model, state)
  return model


def model_items(model: nnx.Module, kinds=BASE_WEIGHTS) -> tp.Iterator[tuple[str, np.ndarray]]:
  for name, value in stacked.per_layer_items(nnx.state(model, kinds)):
    yield name, np.asarray(value)


class DictSource:
  """A TensorSource over an in-memory {name: array} (torch state dicts in tests, exports)."""

  def __init__(self, tensors: dict[str, tp.Any]):
    self.tensors = tensors

  def keys(self):
    return list(self.tensors)

  def shape(self, name):
    return tuple(self.tensors[name].shape)

  def get(self, name):
    t = self.tensors[name]
    return t.detach().cpu().float().numpy() if hasattr(t, "detach") else np.asarray(t)


def _source_shape(target_shape: tuple[int, ...], rule: Rule) -> tuple[int, ...]:
  probe = np.empty(target_shape, dtype=np.int8)
  return tuple(TRANSFORMS[rule.transform][1](probe).shape)


def export(items: tp.Iterable[tuple[str, np.ndarray]], mapping: Mapping,
           *, what: str = "model") -> tp.Iterator[tuple[str, np.ndarray]]:
  """Our (target_name, array) pairs → (source_name, array) in the source layout."""
  for target, array in items:
    hit = mapping.to_source(target)
    if hit is None:
      raise MappingError(f"{what}: no export rule for {target!r}")
    source, rule = hit
    yield source, TRANSFORMS[rule.transform][1](np.asarray(array))


# ---------------------------------------------------------------------------------------------
# Tables.

_LM_LAYER = [
    ("self_attn.q_proj", "transpose"), ("self_attn.k_proj", "transpose"),
    ("self_attn.v_proj", "transpose"), ("self_attn.o_proj", "transpose"),
    ("mlp.gate_proj", "transpose"), ("mlp.up_proj", "transpose"), ("mlp.down_proj", "transpose"),
]

HF_LLAMA = Mapping(
    rules=(
        Rule("model.embed_tokens.weight", "embed_tokens.embedding"),
        *(Rule(f"model.layers.{{i}}.{name}.weight", f"layers.{{i}}.{name}.kernel", t)
          for name, t in _LM_LAYER),
        Rule("model.layers.{i}.input_layernorm.weight", "layers.{i}.input_layernorm.scale"),
        Rule("model.layers.{i}.post_attention_layernorm.weight",
             "layers.{i}.post_attention_layernorm.scale"),
        Rule("model.norm.weight", "norm.scale"),
        Rule("lm_head.weight", "lm_head.kernel", "transpose"),
    ),
    # RoPE tables are recomputed from the config, never loaded.
    skip=(r"rotary_emb\.inv_freq$",),
)

# GSAI-ML/LLaDA-8B-Instruct naming (`ff_proj` is the SiLU gate, `ff_out` the down projection).
_LLADA_NAMES = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
                "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj",
                "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj"}
LLADA = Mapping(
    rules=(
        Rule("model.transformer.wte.weight", "embed_tokens.embedding"),
        *(Rule(f"model.transformer.blocks.{{i}}.{src}.weight", f"layers.{{i}}.{dst}.kernel",
               "transpose") for src, dst in _LLADA_NAMES.items()),
        Rule("model.transformer.blocks.{i}.attn_norm.weight", "layers.{i}.input_layernorm.scale"),
        Rule("model.transformer.blocks.{i}.ff_norm.weight",
             "layers.{i}.post_attention_layernorm.scale"),
        Rule("model.transformer.ln_f.weight", "norm.scale"),
        Rule("model.transformer.ff_out.weight", "lm_head.kernel", "transpose"),
    ),
)


def _whisper_attention(src: str, dst: str) -> list[Rule]:
  rules = [Rule(f"{src}.k_proj.weight", f"{dst}.k_proj.kernel", "transpose")]  # k has no bias
  for name in ("q_proj", "v_proj", "out_proj"):
    rules += [Rule(f"{src}.{name}.weight", f"{dst}.{name}.kernel", "transpose"),
              Rule(f"{src}.{name}.bias", f"{dst}.{name}.bias")]
  return rules


def _whisper_layer_norm_and_ffn(src: str, dst: str, norms: tuple[str, ...]) -> list[Rule]:
  rules = []
  for name in norms:
    rules += [Rule(f"{src}.{name}.weight", f"{dst}.{name}.scale"),
              Rule(f"{src}.{name}.bias", f"{dst}.{name}.bias")]
  for name in ("fc1", "fc2"):
    rules += [Rule(f"{src}.{name}.weight", f"{dst}.{name}.kernel", "transpose"),
              Rule(f"{src}.{name}.bias", f"{dst}.{name}.bias")]
  return rules


_ENC, _DEC = "model.encoder", "model.decoder"
WHISPER_ENCODER = Mapping(rules=(
    *(r for conv in ("conv1", "conv2") for r in (
        Rule(f"{_ENC}.{conv}.weight", f"encoder.{conv}.kernel", "conv"),
        Rule(f"{_ENC}.{conv}.bias", f"encoder.{conv}.bias"))),
    Rule(f"{_ENC}.embed_positions.weight", "encoder.embed_positions.embedding"),
    *_whisper_attention(f"{_ENC}.layers.{{i}}.self_attn", "encoder.layers.{i}.self_attn"),
    *_whisper_layer_norm_and_ffn(f"{_ENC}.layers.{{i}}", "encoder.layers.{i}",
                                 ("self_attn_layer_norm", "final_layer_norm")),
    Rule(f"{_ENC}.layer_norm.weight", "encoder.layer_norm.scale"),
    Rule(f"{_ENC}.layer_norm.bias", "encoder.layer_norm.bias"),
))

# transformers' WhisperForConditionalGeneration names; `proj_out` is tied to the token embedding.
HF_WHISPER = WHISPER_ENCODER + Mapping(
    rules=(
        Rule(f"{_DEC}.embed_tokens.weight", "decoder.embed_tokens.embedding"),
        Rule(f"{_DEC}.embed_positions.weight", "decoder.embed_positions.embedding"),
        *_whisper_attention(f"{_DEC}.layers.{{i}}.self_attn", "decoder.layers.{i}.self_attn"),
        *_whisper_attention(f"{_DEC}.layers.{{i}}.encoder_attn", "decoder.layers.{i}.encoder_attn"),
        *_whisper_layer_norm_and_ffn(
            f"{_DEC}.layers.{{i}}", "decoder.layers.{i}",
            ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm")),
        Rule(f"{_DEC}.layer_norm.weight", "decoder.layer_norm.scale"),
        Rule(f"{_DEC}.layer_norm.bias", "decoder.layer_norm.bias"),
    ),
    skip=(r"^proj_out\.weight$",),
)

# Whisper-LLaDA keeps only the encoder; a full Whisper checkpoint's decoder is skipped on purpose.
WHISPER_ENCODER_ONLY = WHISPER_ENCODER + Mapping(rules=(),
                                                 skip=(r"^model\.decoder\.", r"^proj_out\."))


def _bert_attention(src: str, dst: str, self_name: str) -> list[Rule]:
  rules = []
  for part, ours in (("query", "query"), ("key", "key"), ("value", "value")):
    rules.append(Rule(f"{src}.{self_name}.{part}.weight", f"{dst}.{ours}.kernel", "transpose"))
    rules.append(Rule(f"{src}.{self_name}.{part}.bias", f"{dst}.{ours}.bias"))
  rules += [Rule(f"{src}.output.dense.weight", f"{dst}.dense.kernel", "transpose"),
            Rule(f"{src}.output.dense.bias", f"{dst}.dense.bias"),
            Rule(f"{src}.output.LayerNorm.weight", f"{dst}.norm.scale"),
            Rule(f"{src}.output.LayerNorm.bias", f"{dst}.norm.bias")]
  return rules


def _qformer_layers(prefix: str, self_name: str) -> list[Rule]:
  layer = f"{prefix}encoder.layer.{{i}}"
  return [*_bert_attention(f"{layer}.attention", "layers.{i}.self_attn", self_name),
          *_bert_attention(f"{layer}.crossattention", "layers.{i}.cross_attn", self_name),
          Rule(f"{layer}.intermediate_query.dense.weight", "layers.{i}.fc1.kernel", "transpose"),
          Rule(f"{layer}.intermediate_query.dense.bias", "layers.{i}.fc1.bias"),
          Rule(f"{layer}.output_query.dense.weight", "layers.{i}.fc2.kernel", "transpose"),
          Rule(f"{layer}.output_query.dense.bias", "layers.{i}.fc2.bias"),
          Rule(f"{layer}.output_query.LayerNorm.weight", "layers.{i}.ffn_norm.scale"),
          Rule(f"{layer}.output_query.LayerNorm.bias", "layers.{i}.ffn_norm.bias")]


# transformers' Blip2QFormerModel (cross_attention_frequency=1): the parity reference in tests.
BLIP2_QFORMER = Mapping(
    rules=(Rule("layernorm.weight", "input_norm.scale"), Rule("layernorm.bias", "input_norm.bias"),
           *_qformer_layers("", "attention")),
)

# Diffusion-ASR / SALMONN: `adapter` is a BertLMHeadModel; only the query path is used by the model.
DIFFUSION_ASR_QFORMER = Mapping(
    rules=(Rule("adapter.bert.embeddings.LayerNorm.weight", "input_norm.scale"),
           Rule("adapter.bert.embeddings.LayerNorm.bias", "input_norm.bias"),
           *_qformer_layers("adapter.bert.", "self"),
           Rule("speech_query_tokens", "query_tokens"),
           Rule("linear_proj.weight", "proj.kernel", "transpose"),
           Rule("linear_proj.bias", "proj.bias")),
    # The text-side FFN, word/position embeddings and the LM head of the BERT are never applied to
    # query tokens; they are in the file only because the whole BertLMHeadModel was saved.
    skip=(r"^adapter\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.",
          r"^adapter\.bert\.embeddings\.(word_embeddings|position_embeddings|position_ids)",
          r"^adapter\.cls\."),
)

# PEFT LoRA on LLaDA's q/k/v (A is [r, in], B is [out, r] in torch).
DIFFUSION_ASR_LORA = Mapping(
    rules=tuple(
        Rule(f"llada.base_model.model.model.transformer.blocks.{{i}}.{p}.lora_{ab}.default.weight",
             f"layers.{{i}}.self_attn.{p}.lora.{ab.lower()}", "transpose")
        for p in ("q_proj", "k_proj", "v_proj") for ab in ("A", "B")),
)
