#!/usr/bin/env python3
"""Reference logits and greedy continuations for Sirocco's Mistral Small 4 engine.

The reference is transformers' `Mistral4ForCausalLM` (model_type "mistral4"),
run in float32 on the CPU with eager attention and the eager (loop over experts)
MoE implementation. Each case is a tiny randomly initialised model written in
one of the on-disk layouts the engine has to load; the reference always runs on
the weights exactly as they were written (bf16/f16 rounded, fp8 dequantized),
read back by an independent loader, so reference and engine see identical
values.

Subcommands:
  generate      [--out DIR]                      write the cases + golden outputs
  check         --sirocco BIN [--golden DIR]     regenerate live, compare the
                                                 engine against it and the
                                                 live reference against DIR
  verify-golden [--golden DIR]                   only the live-vs-golden part
  find-seed     CASE [--start N] [--count M]     list seeds that satisfy the
                                                 margin checks (used to pick the
                                                 seeds recorded in CASES)

See tests/reference/README.md for the golden file format.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from transformers import Mistral3Config, Mistral4Config, Mistral4ForCausalLM

HERE = Path(__file__).resolve().parent
DEFAULT_GOLDEN = HERE / "golden"

PROMPT_LEN = 18
GREEDY_TOKENS = 32
FIRST_PROMPT_TOKEN = 3  # prompts avoid the special ids 0-2 (unk, bos, eos)

# Engine tolerance: max |engine - reference| <= ENGINE_REL_TOL * max |reference|.
ENGINE_REL_TOL = 1e-4
# Live reference vs committed golden: same relative form, much tighter.
GOLDEN_REL_TOL = 1e-6
# Margins every case must satisfy so that an engine within ENGINE_REL_TOL makes
# the same discrete decisions as the reference.
# Best - second-best logit, relative to max |logit|: 20x the worst case of two
# logits each off by ENGINE_REL_TOL.
MIN_TOP2_GAP_REL = 4e-3
MIN_ROUTER_GAP = 1e-4  # softmax-score gaps at the top-k / top-group boundaries
MIN_DISTINCT_GREEDY = 8  # the greedy continuation must not collapse to one token

FP8_BLOCK = 16
FP8_MAX = 448.0
# The engine's own block-FP8 weights (`--weights fp8`) use 128 x 128 blocks.
ENGINE_FP8_BLOCK = 128

# ----------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    description: str
    features: list[str]
    storage: str  # f32 | bf16 | f16_sharded | fp8_blockwise | mistral3_bf16
    # Seed for weights and prompt. Each case uses the smallest seed >= 0 that
    # passes every margin check in compute_case (no near-tie in the router's
    # top-k / top-group choice, best-vs-second logit gap above
    # MIN_TOP2_GAP_REL * max|logit| on every greedy step, at least
    # MIN_DISTINCT_GREEDY distinct greedy tokens); `find-seed` lists them.
    # Seeds skipped: qlora_groups_f32 0-3, noqlora_bf16 0-6,
    # mscale_f16_sharded 0-7, fp8_blockwise 0-2, multimodal_per_expert 0-12,
    # engine_fp8_weights 0-4.
    seed: int
    config: dict
    embed_std: float = 0.5
    lm_head_gain: float = 3.0
    router_gain: float = 2.0
    extra: dict = field(default_factory=dict)
    # How the engine is asked to hold the weights (`--weights`). "fp8": the
    # reference runs on what the engine's block-FP8 mode computes with, built
    # here independently (see emulate_engine_fp8).
    engine_weights: str = "f32"


def _rope(theta, factor, orig, beta_fast, beta_slow, mscale, mscale_all_dim, llama4_beta):
    return {
        "rope_type": "yarn",
        "rope_theta": float(theta),
        "factor": float(factor),
        "original_max_position_embeddings": int(orig),
        "max_position_embeddings": int(factor * orig),
        "beta_fast": float(beta_fast),
        "beta_slow": float(beta_slow),
        "mscale": float(mscale),
        "mscale_all_dim": float(mscale_all_dim),
        "llama_4_scaling_beta": float(llama4_beta),
    }


def _config(rope, **kw):
    base = dict(
        hidden_size=64,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        rope_interleave=True,
        attention_bias=False,
        max_position_embeddings=rope["max_position_embeddings"],
        rope_parameters=rope,
    )
    base.update(kw)
    base["num_key_value_heads"] = base["num_attention_heads"]  # MLA: one latent, all heads
    return base


CASES: list[Case] = [
    Case(
        name="qlora_groups_f32",
        description=(
            "q-LoRA MLA, group-limited routing (4 groups, keep 2), 16 experts top-4 with "
            "normalized weights, 1 shared expert, first layer dense; YaRN with a fractional "
            "ramp (rope_theta 10, original 16) and llama-4 query scaling; float32, single "
            "model.safetensors from save_pretrained."
        ),
        features=[
            "q_lora", "group_limited_routing", "norm_topk_prob", "shared_experts", "dense_first_layer",
            "yarn_fractional_ramp", "llama4_query_scale", "rope_interleave", "f32", "single_file",
        ],
        storage="f32",
        seed=4,
        config=_config(
            _rope(10.0, 4, 16, 32, 1, 1.0, 1.0, 0.1),
            vocab_size=256, intermediate_size=96, moe_intermediate_size=16, num_hidden_layers=3,
            num_attention_heads=4, kv_lora_rank=32, q_lora_rank=40,
            qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16,
            n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
            norm_topk_prob=True, routed_scaling_factor=1.0, n_shared_experts=1,
            first_k_dense_replace=1, tie_word_embeddings=False,
        ),
    ),
    Case(
        name="noqlora_bf16",
        description=(
            "Plain q_proj (no q-LoRA), ungrouped routing, 8 experts top-2 without weight "
            "normalization, routed_scaling_factor 2.5, 2 shared experts, every layer MoE; "
            "unequal head dims (nope 16, rope 8, v 24); mscale_all_dim 0 so the softmax scale "
            "is uncorrected while cos/sin carry the YaRN attention factor; bfloat16."
        ),
        features=[
            "no_q_lora", "ungrouped_routing", "unnormalized_topk", "routed_scaling_factor",
            "two_shared_experts", "all_layers_moe", "unequal_head_dims", "mscale_all_dim_zero",
            "llama4_query_scale", "rope_interleave", "bf16", "single_file",
        ],
        storage="bf16",
        seed=7,
        config=_config(
            _rope(10000.0, 8, 8, 32, 1, 1.0, 0.0, 0.15),
            vocab_size=384, intermediate_size=96, moe_intermediate_size=24, num_hidden_layers=2,
            num_attention_heads=4, kv_lora_rank=32, q_lora_rank=None,
            qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=24,
            n_routed_experts=8, num_experts_per_tok=2, n_group=1, topk_group=1,
            norm_topk_prob=False, routed_scaling_factor=2.5, n_shared_experts=2,
            first_k_dense_replace=0, tie_word_embeddings=False,
        ),
    ),
    Case(
        name="mscale_f16_sharded",
        description=(
            "YaRN with mscale 0.707 / mscale_all_dim 1.0 (attention factor != 1 and a "
            "corrected softmax scale), factor 32, beta_fast 16, beta_slow 2, rope_theta 1e6; "
            "tied embeddings (no lm_head.weight on disk); 8 heads; 2 groups keep 1, 8 experts "
            "top-2; float16, sharded with model.safetensors.index.json."
        ),
        features=[
            "q_lora", "yarn_mscale", "yarn_attention_factor", "tied_embeddings", "group_limited_routing",
            "norm_topk_prob", "shared_experts", "dense_first_layer", "llama4_query_scale",
            "rope_interleave", "f16", "sharded",
        ],
        storage="f16_sharded",
        seed=8,
        embed_std=0.375,  # also the lm_head (tied): logits of O(3)
        config=_config(
            _rope(1e6, 32, 8, 16, 2, 0.707, 1.0, 0.1),
            vocab_size=320, intermediate_size=80, moe_intermediate_size=16, num_hidden_layers=3,
            num_attention_heads=8, kv_lora_rank=24, q_lora_rank=32,
            qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
            n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
            norm_topk_prob=True, routed_scaling_factor=1.0, n_shared_experts=1,
            first_k_dense_replace=1, tie_word_embeddings=True,
        ),
        extra={"max_shard_size": "64KB"},
    ),
    Case(
        name="fp8_blockwise",
        description=(
            "Same architecture as qlora_groups_f32 with sizes that leave partial 16x16 blocks "
            "(q_lora_rank 40, intermediate 72, moe_intermediate 24). Every decoder-layer Linear "
            "and both stacked expert tensors are float8_e4m3fn with float32 block scales "
            "(<name>_scale_inv, w = fp8 * scale_inv per block); embeddings, norms, router and "
            "lm_head bfloat16. Written with safetensors save_file."
        ),
        features=[
            "fp8_e4m3_blockwise", "partial_blocks", "stacked_expert_scales", "q_lora",
            "group_limited_routing", "norm_topk_prob", "shared_experts", "dense_first_layer",
            "llama4_query_scale", "rope_interleave", "bf16", "single_file",
        ],
        storage="fp8_blockwise",
        seed=3,
        config=_config(
            _rope(10.0, 4, 16, 32, 1, 1.0, 1.0, 0.1),
            vocab_size=256, intermediate_size=72, moe_intermediate_size=24, num_hidden_layers=3,
            num_attention_heads=4, kv_lora_rank=32, q_lora_rank=40,
            qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16,
            n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
            norm_topk_prob=True, routed_scaling_factor=1.0, n_shared_experts=1,
            first_k_dense_replace=1, tie_word_embeddings=False,
        ),
    ),
    Case(
        name="multimodal_per_expert",
        description=(
            "Released-checkpoint layout: mistral3 config (Mistral3ForConditionalGeneration) with "
            "the mistral4 config under text_config, decoder tensors under model.language_model.*, "
            "experts stored per expert (experts.E.gate_proj/up_proj/down_proj), dummy "
            "vision_tower / multi_modal_projector tensors to ignore; routing as in the release "
            "(1 group, 16 experts top-4, normalized), every layer MoE; bfloat16."
        ),
        features=[
            "mistral3_wrapper", "text_config", "per_expert_tensors", "ignored_vision_tensors",
            "q_lora", "ungrouped_routing", "norm_topk_prob", "shared_experts", "all_layers_moe",
            "llama4_query_scale", "rope_interleave", "bf16", "single_file",
        ],
        storage="mistral3_bf16",
        seed=13,
        config=_config(
            _rope(100.0, 16, 8, 32, 1, 1.0, 1.0, 0.2),
            vocab_size=256, intermediate_size=96, moe_intermediate_size=16, num_hidden_layers=3,
            num_attention_heads=4, kv_lora_rank=32, q_lora_rank=48,
            qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16,
            n_routed_experts=16, num_experts_per_tok=4, n_group=1, topk_group=1,
            norm_topk_prob=True, routed_scaling_factor=1.0, n_shared_experts=1,
            first_k_dense_replace=0, tie_word_embeddings=False,
        ),
    ),
    Case(
        name="engine_fp8_weights",
        description=(
            "A bfloat16 checkpoint served with --weights fp8: the engine quantises every "
            "decoder-layer Linear except kv_b_proj, the shared expert and both stacked expert "
            "tensors to float8_e4m3fn with one float32 scale per 128x128 block (amax / 448) and "
            "multiplies float32 activations by code * scale; the embedding and lm_head stay "
            "bf16 with the lm_head input rounded to bf16; kv_b_proj, router and norms float32. "
            "Widths above 128 leave partial blocks (hidden 160, moe_intermediate 136 so that a "
            "gate_up block straddles the gate/up boundary, q_lora_rank 136, intermediate 144)."
        ),
        features=[
            "engine_fp8_weights", "fp8_128_blocks", "partial_blocks", "bf16_lm_head", "q_lora",
            "ungrouped_routing", "norm_topk_prob", "shared_experts", "dense_first_layer",
            "llama4_query_scale", "rope_interleave", "bf16", "single_file",
        ],
        storage="bf16",
        seed=5,
        engine_weights="fp8",
        config=_config(
            _rope(10.0, 4, 16, 32, 1, 1.0, 1.0, 0.1),
            hidden_size=160, vocab_size=256, intermediate_size=144, moe_intermediate_size=136,
            num_hidden_layers=2, num_attention_heads=4, kv_lora_rank=32, q_lora_rank=136,
            qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16,
            n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
            norm_topk_prob=True, routed_scaling_factor=1.0, n_shared_experts=1,
            first_k_dense_replace=1, tie_word_embeddings=False,
        ),
    ),
]
CASES_BY_NAME = {c.name: c for c in CASES}

# ----------------------------------------------------------------------------
# Model construction and initialisation
# ----------------------------------------------------------------------------


def _eager(config: Mistral4Config) -> Mistral4Config:
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    return config


def build_config(case: Case) -> Mistral4Config:
    cfg = Mistral4Config(**copy.deepcopy(case.config))
    return _eager(cfg)


def init_weights(model: Mistral4ForCausalLM, case: Case, seed: int) -> None:
    """Deterministic normal init, independent of module construction order.

    Scales keep activations O(1): Linear weights ~ N(0, 1/fan_in), router logits
    ~ N(0, router_gain^2) so the expert softmax is well spread, logits ~
    N(0, lm_head_gain^2). Norm weights are drawn in [0.7, 1.3] so an engine that
    ignores them is caught.
    """
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())  # tied lm_head appears once (as embed_tokens)
    with torch.no_grad():
        for name in sorted(params):
            p = params[name]
            shape = tuple(p.shape)
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                val = 0.7 + 0.6 * torch.rand(shape, generator=gen)
            elif name.endswith("embed_tokens.weight"):
                val = torch.randn(shape, generator=gen) * case.embed_std
            elif name == "lm_head.weight":
                val = torch.randn(shape, generator=gen) * (case.lm_head_gain / math.sqrt(cfg.hidden_size))
            elif name.endswith("mlp.gate.weight"):
                val = torch.randn(shape, generator=gen) * (case.router_gain / math.sqrt(cfg.hidden_size))
            elif name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
                val = torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
            elif name.endswith(".weight") and p.dim() == 2:
                val = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
            else:
                raise RuntimeError(f"no init rule for parameter {name} {shape}")
            p.copy_(val.to(p.dtype))


def make_prompt(case: Case, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(1_000_003 + seed)
    vocab = case.config["vocab_size"]
    return torch.randint(FIRST_PROMPT_TOKEN, vocab, (PROMPT_LEN,), generator=gen).tolist()


# ----------------------------------------------------------------------------
# FP8 block quantization
# ----------------------------------------------------------------------------


def quantize_blockwise(w: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., R, C] float32 -> (float8_e4m3fn [..., R, C], float32 scale_inv [..., ceil(R/B), ceil(C/B)])."""
    *lead, rows, cols = w.shape
    nr, nc = -(-rows // block), -(-cols // block)
    padded = torch.zeros(*lead, nr * block, nc * block, dtype=torch.float32)
    padded[..., :rows, :cols] = w.float()
    blocks = padded.reshape(*lead, nr, block, nc, block)
    amax = blocks.abs().amax(dim=(-3, -1))
    scale = amax / FP8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = (blocks / scale[..., :, None, :, None]).clamp(-FP8_MAX, FP8_MAX)
    q = q.reshape(*lead, nr * block, nc * block)[..., :rows, :cols].contiguous().to(torch.float8_e4m3fn)
    return q, scale.contiguous()


def dequantize_blockwise(q: torch.Tensor, scale_inv: torch.Tensor, block: int) -> torch.Tensor:
    rows, cols = q.shape[-2], q.shape[-1]
    s = scale_inv.float().repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)
    return q.float() * s[..., :rows, :cols]


def is_fp8_target(name: str, tensor: torch.Tensor) -> bool:
    """Decoder-layer Linear weights (attention projections including
    kv_a_proj_with_mqa, dense MLP, shared experts) and the stacked expert
    tensors. Norms and the router gate stay bf16."""
    if not name.startswith("model.layers."):
        return False
    if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
        return True
    if name.endswith("norm.weight") or name.endswith("mlp.gate.weight"):
        return False
    return name.endswith(".weight") and tensor.dim() == 2


def is_engine_fp8_target(name: str, tensor: torch.Tensor) -> bool:
    """What the engine's --weights fp8 holds in FP8: the decoder-layer Linear
    weights except kv_b_proj (kept float32), and the stacked expert tensors."""
    return is_fp8_target(name, tensor) and not name.endswith("kv_b_proj.weight")


@torch.no_grad()
def emulate_engine_fp8(model: Mistral4ForCausalLM) -> None:
    """Turns a float32 reference into what the engine computes with
    --weights fp8: FP8 targets replaced by their 128x128-block e4m3
    quantisation, dequantised (code * scale in float32); the embedding and
    lm_head rounded to bf16, and the lm_head's input rounded to bf16 (the
    engine's bf16 products round their activations)."""
    for name, p in model.named_parameters():
        if is_engine_fp8_target(name, p):
            q, s = quantize_blockwise(p.detach().float(), ENGINE_FP8_BLOCK)
            p.copy_(dequantize_blockwise(q, s, ENGINE_FP8_BLOCK))
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            p.copy_(p.to(torch.bfloat16).float())
    model.lm_head.register_forward_pre_hook(lambda mod, inp: (inp[0].to(torch.bfloat16).float(),))


# ----------------------------------------------------------------------------
# Writers (one per storage format). Each returns the float32 state dict the
# written files must decode to, used to validate the loader round trip.
# ----------------------------------------------------------------------------


def _state_dict_f32(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().float() for k, v in model.state_dict().items()}


def write_checkpoint(case: Case, model: Mistral4ForCausalLM, out: Path) -> dict[str, torch.Tensor]:
    sd = _state_dict_f32(model)
    if case.storage == "f32":
        model.save_pretrained(out)
        return sd
    if case.storage == "bf16":
        model.to(torch.bfloat16).save_pretrained(out)
        return {k: v.to(torch.bfloat16).float() for k, v in sd.items()}
    if case.storage == "f16_sharded":
        model.to(torch.float16).save_pretrained(out, max_shard_size=case.extra["max_shard_size"])
        return {k: v.to(torch.float16).float() for k, v in sd.items()}
    if case.storage == "fp8_blockwise":
        return _write_fp8(case, model, sd, out)
    if case.storage == "mistral3_bf16":
        return _write_mistral3(case, model, sd, out)
    raise ValueError(case.storage)


def _text_config_dict(model: Mistral4ForCausalLM, dtype: str) -> dict:
    # Same content save_pretrained writes (values that differ from the defaults
    # of a bare PreTrainedConfig, which covers every mistral4 field).
    cfg = copy.deepcopy(model.config)
    cfg.architectures = ["Mistral4ForCausalLM"]
    cfg.dtype = dtype
    return cfg.to_diff_dict()


def _write_fp8(case, model, sd, out: Path) -> dict[str, torch.Tensor]:
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    expected: dict[str, torch.Tensor] = {}
    for name, w in sd.items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        if is_fp8_target(name, w):
            q, s = quantize_blockwise(w, FP8_BLOCK)
            if torch.isnan(q.float()).any():
                raise RuntimeError(f"fp8 quantization of {name} produced NaN")
            tensors[name] = q
            tensors[name + "_scale_inv"] = s
            expected[name] = dequantize_blockwise(q, s, FP8_BLOCK)
        else:
            tensors[name] = w.to(torch.bfloat16).contiguous()
            expected[name] = tensors[name].float()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = _text_config_dict(model, "bfloat16")
    cfg["quantization_config"] = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": [FP8_BLOCK, FP8_BLOCK],
    }
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return expected


_EXPERT_STACK_RE = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")


def _write_mistral3(case, model, sd, out: Path) -> dict[str, torch.Tensor]:
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    inter = cfg.moe_intermediate_size
    tensors: dict[str, torch.Tensor] = {}
    for name, w in sd.items():
        wb = w.to(torch.bfloat16)
        if name == "lm_head.weight":
            tensors[name] = wb.contiguous()
            continue
        assert name.startswith("model."), name
        lm_name = "model.language_model." + name[len("model."):]
        m = _EXPERT_STACK_RE.match(name)
        if m is None:
            tensors[lm_name] = wb.contiguous()
            continue
        prefix = "model.language_model." + m.group(1)[len("model."):]
        for e in range(wb.shape[0]):
            if m.group(2) == "gate_up_proj":
                tensors[f"{prefix}.{e}.gate_proj.weight"] = wb[e, :inter].contiguous()
                tensors[f"{prefix}.{e}.up_proj.weight"] = wb[e, inter:].contiguous()
            else:
                tensors[f"{prefix}.{e}.down_proj.weight"] = wb[e].contiguous()
    # Vision-side tensors a text-only engine must skip (shapes follow the small
    # vision_config below: hidden 32, patch 4, spatial merge 2).
    gen = torch.Generator().manual_seed(case.seed + 77)
    dummies = {
        "model.vision_tower.patch_conv.weight": (32, 3, 4, 4),
        "model.vision_tower.ln_pre.weight": (32,),
        "model.multi_modal_projector.norm.weight": (32,),
        "model.multi_modal_projector.patch_merger.merging_layer.weight": (32, 128),
        "model.multi_modal_projector.linear_1.weight": (cfg.hidden_size, 32),
        "model.multi_modal_projector.linear_2.weight": (cfg.hidden_size, cfg.hidden_size),
    }
    for name, shape in dummies.items():
        tensors[name] = (torch.randn(shape, generator=gen) * 0.1).to(torch.bfloat16)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})

    text = _text_config_dict(model, "bfloat16")
    text.pop("architectures", None)
    vision = {
        "model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "head_dim": 16, "patch_size": 4, "image_size": 32,
    }
    # The wrapper's own tie flag (default true) is what transformers consults for
    # Mistral3ForConditionalGeneration; set it to match the text model.
    mm = Mistral3Config(text_config=text, vision_config=vision, tie_word_embeddings=cfg.tie_word_embeddings)
    mm.architectures = ["Mistral3ForConditionalGeneration"]
    mm.dtype = "bfloat16"
    mm.to_json_file(str(out / "config.json"))
    return {k: v.to(torch.bfloat16).float() for k, v in sd.items()}


# ----------------------------------------------------------------------------
# Loader: reads a case directory the way an engine has to, independently of
# transformers' checkpoint loading.
# ----------------------------------------------------------------------------


def read_tensors(case_dir: Path) -> dict[str, torch.Tensor]:
    index = case_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(case_dir / f), framework="pt") as fh:
            for k in fh.keys():
                if k in out:
                    raise RuntimeError(f"tensor {k} appears in more than one shard")
                out[k] = fh.get_tensor(k)
    return out


_PER_EXPERT_RE = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def load_reference(case_dir: Path) -> tuple[Mistral4ForCausalLM, dict[str, torch.Tensor]]:
    """Float32 eager Mistral4ForCausalLM holding exactly the weights on disk."""
    top = json.loads((case_dir / "config.json").read_text())
    if top.get("model_type") == "mistral3":
        text = dict(top["text_config"])
        lm_prefix = "model.language_model."
    else:
        text = dict(top)
        lm_prefix = "model."
    quant = text.pop("quantization_config", None) or top.get("quantization_config")
    block = None
    if quant is not None:
        assert quant["quant_method"] == "fp8" and quant["fmt"] == "e4m3", quant
        block = tuple(quant["weight_block_size"])
    raw = read_tensors(case_dir)

    sd: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for name, t in raw.items():
        if name.endswith("_scale_inv"):
            continue
        if name.startswith(("model.vision_tower.", "model.multi_modal_projector.")):
            continue
        if name == "lm_head.weight":
            new = name
        elif name.startswith(lm_prefix):
            new = "model." + name[len(lm_prefix):]
        else:
            raise RuntimeError(f"unexpected tensor {name}")
        if name + "_scale_inv" in raw:
            assert block is not None and block[0] == block[1], block
            t = dequantize_blockwise(t, raw[name + "_scale_inv"], block[0])
        t = t.float()
        m = _PER_EXPERT_RE.match(new)
        if m:
            experts.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = t
        else:
            sd[new] = t
    for prefix, per in experts.items():
        ids = sorted(per)
        assert ids == list(range(len(ids))), f"{prefix}: missing experts"
        sd[prefix + ".gate_up_proj"] = torch.stack([torch.cat([per[e]["gate_proj"], per[e]["up_proj"]], 0) for e in ids])
        sd[prefix + ".down_proj"] = torch.stack([per[e]["down_proj"] for e in ids])

    cfg = _eager(Mistral4Config.from_dict(text))
    cfg.dtype = torch.float32
    if cfg.tie_word_embeddings:
        assert "lm_head.weight" not in sd or torch.equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"])
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    model = Mistral4ForCausalLM(cfg).float().eval()
    missing, unexpected = model.load_state_dict(sd, strict=True)
    assert not missing and not unexpected
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32, n
    # The rotary dimension must come out as qk_rope_head_dim.
    assert model.model.rotary_emb.inv_freq.numel() * 2 == cfg.qk_rope_head_dim
    return model, sd


# ----------------------------------------------------------------------------
# Reference computations
# ----------------------------------------------------------------------------


@torch.no_grad()
def forward_logits(model, tokens: list[int]) -> torch.Tensor:
    ids = torch.tensor([tokens], dtype=torch.long)
    return model(input_ids=ids, use_cache=False).logits[0].float()


@torch.no_grad()
def greedy_loop(model, prompt: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    seq = list(prompt)
    rows = []
    for _ in range(n):
        row = forward_logits(model, seq)[-1]
        rows.append(row)
        seq.append(int(torch.argmax(row)))
    return seq[len(prompt):], rows


def top2_gap(row: torch.Tensor) -> float:
    v = torch.topk(row, 2).values
    return float(v[0] - v[1])


@torch.no_grad()
def router_margins(model, tokens: list[int]) -> dict:
    """Smallest softmax-score gaps at every discrete routing boundary."""
    cfg = model.config
    captured = []
    hooks = []
    for layer in model.model.layers:
        gate = getattr(layer.mlp, "gate", None)
        if gate is not None:
            hooks.append(gate.register_forward_hook(lambda mod, inp, out: captured.append(out)))
    try:
        forward_logits(model, tokens)
    finally:
        for h in hooks:
            h.remove()
    E, G, kg, k = cfg.n_routed_experts, cfg.n_group, cfg.topk_group, cfg.num_experts_per_tok
    expert_gap = math.inf
    group_gap = math.inf if (G > 1 and kg < G) else None
    for router_logits, _, topk_idx in captured:
        scores = router_logits.float().softmax(-1)
        T = scores.shape[0]
        keep = torch.ones(T, E, dtype=torch.bool)
        if group_gap is not None:
            gs = scores.view(T, G, E // G).topk(2, dim=-1).values.sum(-1)
            srt = gs.sort(dim=-1, descending=True).values
            group_gap = min(group_gap, float((srt[:, kg - 1] - srt[:, kg]).min()))
            kept_groups = gs.topk(kg, dim=-1).indices
            gmask = torch.zeros(T, G, dtype=torch.bool).scatter_(1, kept_groups, True)
            keep = gmask[:, :, None].expand(T, G, E // G).reshape(T, E)
        elig = scores.masked_fill(~keep, -1.0)
        srt = elig.sort(dim=-1, descending=True).values
        if int(keep.sum(-1).min()) > k:
            expert_gap = min(expert_gap, float((srt[:, k - 1] - srt[:, k]).min()))
        mine = elig.topk(k, dim=-1).indices.sort(-1).values
        assert torch.equal(mine, topk_idx.sort(-1).values), "router re-derivation disagrees with the model"
    return {"min_router_expert_gap": expert_gap, "min_router_group_gap": group_gap}


@dataclass
class CaseResult:
    meta: dict
    logits: np.ndarray
    violations: list[str]


def compute_case(case: Case, seed: int, case_dir: Path) -> CaseResult:
    """Builds, writes and evaluates one case into case_dir (replaced)."""
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    torch.manual_seed(seed)
    model = Mistral4ForCausalLM(build_config(case)).float()
    init_weights(model, case, seed)
    expected = write_checkpoint(case, model, case_dir)
    del model

    ref, sd = load_reference(case_dir)
    for k, v in expected.items():
        if not torch.equal(sd[k], v):
            raise RuntimeError(f"{case.name}: {k} does not decode to the value that was written")
    if case.storage in ("f32", "bf16", "f16_sharded"):
        # transformers' own loader must agree with ours on these layouts.
        hf = Mistral4ForCausalLM.from_pretrained(
            case_dir, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
        )
        for k, v in hf.state_dict().items():
            if not torch.equal(v.float(), sd[k]):
                raise RuntimeError(f"{case.name}: from_pretrained disagrees on {k}")
        del hf

    if case.engine_weights == "fp8":
        emulate_engine_fp8(ref)
    elif case.engine_weights != "f32":
        raise ValueError(case.engine_weights)

    prompt = make_prompt(case, seed)
    greedy, rows = greedy_loop(ref, prompt, GREEDY_TOKENS)
    tokens = prompt + greedy
    logits = forward_logits(ref, tokens)
    logits_np = logits.numpy().astype(np.float32)

    one_pass_argmax = logits[len(prompt) - 1: len(tokens) - 1].argmax(-1).tolist()
    max_abs = float(np.abs(logits_np).max())
    min_gap = min(top2_gap(r) for r in rows)
    margins = router_margins(ref, tokens)

    violations = []
    if one_pass_argmax != greedy:
        violations.append("one-pass argmax differs from the greedy loop")
    if min_gap <= MIN_TOP2_GAP_REL * max_abs:
        violations.append(f"min_top2_gap {min_gap:.3g} <= {MIN_TOP2_GAP_REL} * max_abs_logit {max_abs:.3g}")
    if margins["min_router_expert_gap"] <= MIN_ROUTER_GAP:
        violations.append(f"router expert gap {margins['min_router_expert_gap']:.3g}")
    if margins["min_router_group_gap"] is not None and margins["min_router_group_gap"] <= MIN_ROUTER_GAP:
        violations.append(f"router group gap {margins['min_router_group_gap']:.3g}")
    if len(set(greedy)) < MIN_DISTINCT_GREEDY:
        violations.append(f"greedy has only {len(set(greedy))} distinct tokens")

    meta = {
        "description": case.description,
        "prompt": prompt,
        "greedy": greedy,
        "features": case.features,
        "max_abs_logit": max_abs,
        "min_top2_gap": min_gap,
        "n_tokens": len(tokens),
        "vocab_size": int(logits_np.shape[1]),
        "storage": case.storage,
        "engine_weights": case.engine_weights,
        "seed": seed,
        "min_router_expert_gap": margins["min_router_expert_gap"],
        "min_router_group_gap": margins["min_router_group_gap"],
        "distinct_greedy_tokens": len(set(greedy)),
        "engine_rel_tol": ENGINE_REL_TOL,
    }
    return CaseResult(meta=meta, logits=logits_np, violations=violations)


def write_case_outputs(res: CaseResult, case_dir: Path) -> None:
    np.save(case_dir / "logits.npy", res.logits)
    (case_dir / "case.json").write_text(json.dumps(res.meta, indent=2) + "\n")
    for f in case_dir.iterdir():  # safetensors writers create 0600 files
        f.chmod(0o644)


def generate_all(out: Path, names: list[str] | None = None) -> dict[str, CaseResult]:
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for case in CASES:
        if names and case.name not in names:
            continue
        res = compute_case(case, case.seed, out / case.name)
        if res.violations:
            raise SystemExit(f"{case.name} (seed {case.seed}) violates margin checks: {res.violations}")
        write_case_outputs(res, out / case.name)
        results[case.name] = res
    return results


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


# ----------------------------------------------------------------------------
# Golden comparison
# ----------------------------------------------------------------------------

_IGNORED_CONFIG_KEYS = {"transformers_version"}


def _strip_config(d):
    if isinstance(d, dict):
        return {k: _strip_config(v) for k, v in d.items() if k not in _IGNORED_CONFIG_KEYS}
    return d


def compare_to_golden(live_dir: Path, golden_dir: Path, live: CaseResult) -> list[str]:
    """Problems found between a freshly generated case and its committed golden."""
    problems = []
    if not (golden_dir / "case.json").exists():
        return [f"no golden at {golden_dir}"]
    gmeta = json.loads((golden_dir / "case.json").read_text())
    glogits = np.load(golden_dir / "logits.npy")
    if gmeta["prompt"] != live.meta["prompt"]:
        problems.append("prompt differs")
    if gmeta["greedy"] != live.meta["greedy"]:
        problems.append("greedy differs")
    if glogits.shape != live.logits.shape or glogits.dtype != np.float32:
        problems.append(f"logits shape/dtype {glogits.shape}/{glogits.dtype} vs {live.logits.shape}/float32")
    else:
        ratio = float(np.abs(glogits.astype(np.float64) - live.logits).max() / np.abs(glogits).max())
        if ratio > GOLDEN_REL_TOL:
            problems.append(f"logits differ: max|diff|/max|golden| = {ratio:.3g}")
    gcfg = _strip_config(json.loads((golden_dir / "config.json").read_text()))
    lcfg = _strip_config(json.loads((live_dir / "config.json").read_text()))
    if gcfg != lcfg:
        problems.append("config.json differs")
    try:
        gt, lt = read_tensors(golden_dir), read_tensors(live_dir)
    except Exception as e:  # noqa: BLE001 - reported as a failure
        return problems + [f"cannot read tensors: {e}"]
    if set(gt) != set(lt):
        problems.append(f"tensor names differ: {sorted(set(gt) ^ set(lt))[:5]}")
    else:
        bad = [k for k in sorted(gt) if gt[k].dtype != lt[k].dtype or gt[k].shape != lt[k].shape
               or not torch.equal(gt[k].view(torch.uint8), lt[k].view(torch.uint8))]
        if bad:
            problems.append(f"{len(bad)} tensors differ, e.g. {bad[0]}")
    gfiles = sorted(p.name for p in golden_dir.iterdir())
    lfiles = sorted(p.name for p in live_dir.iterdir())
    if gfiles != lfiles:
        problems.append(f"file lists differ: golden {gfiles} live {lfiles}")
    return problems


# ----------------------------------------------------------------------------
# Engine comparison
# ----------------------------------------------------------------------------


def _run(cmd: list[str], timeout: int = 600) -> tuple[int, str, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        return 124, "", f"timed out after {timeout}s"


def _tail(s: str, n: int = 800) -> str:
    s = s.strip()
    return s if len(s) <= n else "..." + s[-n:]


def engine_logits(binary: str, case_dir: Path, tokens: list[int], out: Path, incremental: bool, weights: str):
    cmd = [binary, "logits", "--model", str(case_dir), "--tokens", ",".join(map(str, tokens)), "--out", str(out),
           "--weights", weights]
    if incremental:
        cmd.append("--incremental")
    rc, so, se = _run(cmd)
    if rc != 0:
        return None, f"exit {rc}: {_tail(se or so)}"
    try:
        arr = np.load(out)
    except Exception as e:  # noqa: BLE001
        return None, f"cannot read {out}: {e}"
    return arr, None


def logits_ratio(engine: np.ndarray, ref: np.ndarray) -> tuple[float | None, str | None]:
    if engine.shape != ref.shape:
        return None, f"shape {engine.shape} != {ref.shape}"
    e = engine.astype(np.float64)
    if not np.all(np.isfinite(e)):
        return None, "non-finite logits"
    return float(np.abs(e - ref.astype(np.float64)).max() / np.abs(ref).max()), None


def engine_generate(binary: str, case_dir: Path, prompt: list[int], weights: str):
    cmd = [binary, "generate", "--model", str(case_dir), "--tokens", ",".join(map(str, prompt)),
           "--max-tokens", str(GREEDY_TOKENS), "--ignore-eos", "--weights", weights]
    rc, so, se = _run(cmd)
    if rc != 0:
        return None, f"exit {rc}: {_tail(se or so)}"
    obj = None
    try:
        obj = json.loads(so)
    except json.JSONDecodeError:
        for line in reversed(so.strip().splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                    break
                except json.JSONDecodeError:
                    pass
    if not isinstance(obj, dict) or "token_ids" not in obj:
        return None, f"no JSON object with token_ids in output: {_tail(so)}"
    ids = [int(t) for t in obj["token_ids"]]
    # Accept the prompt echoed in front of the continuation.
    if len(ids) == len(prompt) + GREEDY_TOKENS and ids[: len(prompt)] == prompt:
        ids = ids[len(prompt):]
    return ids, None


# ----------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------


def setup_torch() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)


def cmd_generate(args) -> int:
    out = Path(args.out)
    results = generate_all(out, args.case)
    total = 0
    print(f"{'case':<24} {'bytes':>9} {'max|logit|':>10} {'top2 gap':>9} {'gap/max':>8} "
          f"{'router gap':>10} {'group gap':>9} {'distinct':>8}")
    for name, res in results.items():
        size = dir_size(out / name)
        total += size
        m = res.meta
        gg = m["min_router_group_gap"]
        print(f"{name:<24} {size:>9} {m['max_abs_logit']:>10.4f} {m['min_top2_gap']:>9.4f} "
              f"{m['min_top2_gap'] / m['max_abs_logit']:>8.4f} {m['min_router_expert_gap']:>10.2e} "
              f"{'-' if gg is None else f'{gg:.2e}':>9} {m['distinct_greedy_tokens']:>8}")
    print(f"total {total} bytes in {out}")
    return 0


def _live_vs_golden(golden: Path, live_root: Path) -> tuple[dict[str, CaseResult], dict[str, list[str]]]:
    live, problems = {}, {}
    for case in CASES:
        res = compute_case(case, case.seed, live_root / case.name)
        write_case_outputs(res, live_root / case.name)
        live[case.name] = res
        problems[case.name] = list(res.violations) + compare_to_golden(live_root / case.name, golden / case.name, res)
    return live, problems


def cmd_verify_golden(args) -> int:
    golden = Path(args.golden)
    with tempfile.TemporaryDirectory(prefix="sirocco_ref_") as tmp:
        _, problems = _live_vs_golden(golden, Path(tmp))
    failed = False
    print(f"{'case':<24} golden")
    for name, probs in problems.items():
        print(f"{name:<24} {'OK' if not probs else 'FAIL: ' + '; '.join(probs)}")
        failed |= bool(probs)
    return 1 if failed else 0


def cmd_check(args) -> int:
    binary = args.sirocco
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        print(f"sirocco binary not found or not executable: {binary}", file=sys.stderr)
        return 2
    binary = os.path.abspath(binary)
    golden = Path(args.golden)
    failed = False
    rows = []
    with tempfile.TemporaryDirectory(prefix="sirocco_ref_") as tmp:
        tmp = Path(tmp)
        live, golden_problems = _live_vs_golden(golden, tmp / "cases")
        for case in CASES:
            res = live[case.name]
            case_dir = tmp / "cases" / case.name
            tokens = res.meta["prompt"] + res.meta["greedy"]
            notes = []
            ratios = {}
            for mode, incr in (("full", False), ("incr", True)):
                arr, err = engine_logits(binary, case_dir, tokens, tmp / f"{case.name}_{mode}.npy", incr,
                                         case.engine_weights)
                if err is None:
                    ratio, err = logits_ratio(arr, res.logits)
                else:
                    ratio = None
                ratios[mode] = ratio
                if err is not None:
                    notes.append(f"logits {mode}: {err}")
                elif ratio > ENGINE_REL_TOL:
                    notes.append(f"logits {mode}: ratio {ratio:.3g} > {ENGINE_REL_TOL}")
            ids, err = engine_generate(binary, case_dir, res.meta["prompt"], case.engine_weights)
            greedy_ok = err is None and ids == res.meta["greedy"]
            if err is not None:
                notes.append(f"generate: {err}")
            elif not greedy_ok:
                first = next((i for i, (a, b) in enumerate(zip(ids, res.meta["greedy"])) if a != b),
                             min(len(ids), GREEDY_TOKENS))
                notes.append(f"greedy differs from step {first} (got {len(ids)} tokens)")
            gp = golden_problems[case.name]
            if gp:
                notes.append("golden: " + "; ".join(gp))
            case_failed = bool(notes)
            failed |= case_failed
            greedy = "error" if err is not None else ("match" if greedy_ok else "DIFF")
            rows.append((case.name, ratios["full"], ratios["incr"], greedy, not gp, case_failed, notes))

    def fmt(r):
        return "error" if r is None else f"{r:.2e}"

    print(f"{'case':<24} {'full':>9} {'incr':>9} {'greedy':>7} {'golden':>7}  result")
    for name, rf, ri, g, gold, bad, _ in rows:
        print(f"{name:<24} {fmt(rf):>9} {fmt(ri):>9} {g:>7} "
              f"{'same' if gold else 'DRIFT':>7}  {'FAIL' if bad else 'ok'}")
    print(f"(full/incr: max|engine - ref| / max|ref| over all rows; limit {ENGINE_REL_TOL})")
    for name, *_, notes in rows:
        for n in notes:
            print(f"  {name}: {n}")
    return 1 if failed else 0


def cmd_find_seed(args) -> int:
    case = CASES_BY_NAME[args.case]
    with tempfile.TemporaryDirectory(prefix="sirocco_seed_") as tmp:
        for seed in range(args.start, args.start + args.count):
            res = compute_case(case, seed, Path(tmp) / case.name)
            m = res.meta
            print(f"seed {seed}: {'ok' if not res.violations else res.violations} "
                  f"gap/max {m['min_top2_gap'] / m['max_abs_logit']:.4f} router {m['min_router_expert_gap']:.2e} "
                  f"group {m['min_router_group_gap']} distinct {m['distinct_greedy_tokens']}", flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write cases and golden outputs")
    g.add_argument("--out", default=str(DEFAULT_GOLDEN))
    g.add_argument("--case", action="append", help="only this case (repeatable)")
    c = sub.add_parser("check", help="compare a sirocco binary against the live reference")
    c.add_argument("--sirocco", required=True)
    c.add_argument("--golden", default=str(DEFAULT_GOLDEN))
    v = sub.add_parser("verify-golden", help="compare the live reference against the committed goldens")
    v.add_argument("--golden", default=str(DEFAULT_GOLDEN))
    f = sub.add_parser("find-seed", help="evaluate margin checks for a range of seeds")
    f.add_argument("case", choices=sorted(CASES_BY_NAME))
    f.add_argument("--start", type=int, default=0)
    f.add_argument("--count", type=int, default=10)
    args = ap.parse_args(argv)
    if args.cmd == "check":
        binary = args.sirocco
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            print(f"sirocco binary not found or not executable: {binary}", file=sys.stderr)
            return 2
    setup_torch()
    return {"generate": cmd_generate, "check": cmd_check, "verify-golden": cmd_verify_golden,
            "find-seed": cmd_find_seed}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
