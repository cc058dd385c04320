#!/usr/bin/env python3
"""Reference image features, logits and greedy continuations for Sirocco's
Pixtral vision encoder + multimodal projector (engine/pixtral).

The reference is transformers' `Mistral3ForConditionalGeneration` (model_type
"mistral3": a `mistral4` text_config and a `pixtral` vision_config), run in
float32 on the CPU with eager attention and the eager MoE path, on the weights
exactly as written (bf16 cases are rounded before the reference runs).

Subcommands:
  generate      [--out DIR] [--case NAME]   write the cases + golden outputs
  verify-golden [--golden DIR]              regenerate into a temporary folder
                                            and compare with the committed goldens
  find-seed     CASE [--start N] [--count M]  seeds that pass the margin checks

See tests/reference/README.md ("Pixtral") for the file format.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from transformers import Mistral3Config, Mistral3ForConditionalGeneration

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import mistral4_reference as m4  # noqa: E402  (shared text-config helpers and margins)

DEFAULT_GOLDEN = HERE / "golden"

IMAGE_TOKEN = 10  # [IMG]
IMG_BREAK = 12  # [IMG_BREAK]
IMG_END = 13  # [IMG_END]
SPECIAL_IDS = {0, 1, 2, IMAGE_TOKEN, IMG_BREAK, IMG_END}
GREEDY_TOKENS = 16
TEXT_RUN = 5  # ordinary text tokens before, between and after the images

ENGINE_REL_TOL = 1e-4  # engine vs reference, relative to max |reference|
GOLDEN_REL_TOL = 1e-6  # live reference vs committed golden

# (height, width) in pixels: multiples of patch_size * spatial_merge_size = 28.
IMAGE_SIZES = [(56, 84), (28, 56)]


@dataclass
class PixCase:
    name: str
    description: str
    seed: int
    vision: dict
    wrapper: dict
    # "f32_model_names": float32 under the model's own parameter names
    # (model.vision_tower., model.multi_modal_projector., model.language_model.,
    # lm_head.), as the released checkpoint stores them; "bf16_save_pretrained":
    # bfloat16 from save_pretrained, which (transformers 5.24) writes the older
    # names vision_tower., multi_modal_projector., language_model.model.,
    # language_model.lm_head.
    storage: str
    logits: bool  # also the logits of a prompt with the images, and a greedy continuation


TEXT_CONFIG = m4._config(
    m4._rope(10.0, 4, 16, 32, 1, 1.0, 1.0, 0.1),
    vocab_size=256, intermediate_size=96, moe_intermediate_size=16, num_hidden_layers=2,
    num_attention_heads=4, kv_lora_rank=32, q_lora_rank=48,
    qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16,
    n_routed_experts=8, num_experts_per_tok=2, n_group=1, topk_group=1,
    norm_topk_prob=True, routed_scaling_factor=1.0, n_shared_experts=1,
    first_k_dense_replace=1, tie_word_embeddings=False,
)

VISION_BASE = dict(
    model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=2, head_dim=16, num_channels=3, patch_size=14, image_size=1540,
    hidden_act="silu", rope_parameters={"rope_type": "axial", "rope_theta": 10000.0},
)

CASES = [
    PixCase(
        name="pixtral_tiny",
        description=(
            "Mistral3ForConditionalGeneration, float32, the model's parameter names (model.vision_tower., "
            "model.multi_modal_projector., model.language_model., lm_head.). Pixtral: patch 14, hidden 32, "
            "2 layers, 2 heads (head_dim 16), silu MLP, axial rope theta 10000; projector: spatial merge 2, "
            "gelu, no bias; vision_feature_layer -1. Two images (56x84 and 28x56 pixels) in one prompt; "
            "features per image, logits of every position and a 16-token greedy continuation."
        ),
        seed=0,
        vision=dict(VISION_BASE),
        wrapper=dict(vision_feature_layer=-1, projector_hidden_act="gelu"),
        storage="f32_model_names",
        logits=True,
    ),
    PixCase(
        name="pixtral_feature_layer_m2",
        description=(
            "vision_feature_layer -2 (the projector reads the output of the first of two layers), gelu "
            "vision MLP, silu projector; bfloat16 weights from save_pretrained, which writes the older "
            "names (vision_tower., multi_modal_projector., language_model.model., "
            "language_model.lm_head.). Features only."
        ),
        seed=1,
        vision=dict(VISION_BASE, hidden_act="gelu"),
        wrapper=dict(vision_feature_layer=-2, projector_hidden_act="silu"),
        storage="bf16_save_pretrained",
        logits=False,
    ),
]
CASES_BY_NAME = {c.name: c for c in CASES}


# ----------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------


def build_config(case: PixCase) -> Mistral3Config:
    text = copy.deepcopy(TEXT_CONFIG)
    text["model_type"] = "mistral4"
    cfg = Mistral3Config(
        text_config=text, vision_config=copy.deepcopy(case.vision), image_token_index=IMAGE_TOKEN,
        spatial_merge_size=2, multimodal_projector_bias=False, tie_word_embeddings=False, **case.wrapper,
    )
    cfg.architectures = ["Mistral3ForConditionalGeneration"]
    return cfg


def make_eager(model: Mistral3ForConditionalGeneration) -> None:
    for c in (model.config, model.config.text_config, model.config.vision_config):
        c._attn_implementation = "eager"
    m4._eager(model.config.text_config)


def init_weights(model, seed: int) -> None:
    """Deterministic init by sorted parameter name; scales keep activations O(1)."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(params):
            p = params[name]
            shape = tuple(p.shape)
            if name.endswith("norm.weight") or name.endswith("layernorm.weight") or name.endswith("ln_pre.weight"):
                val = 0.7 + 0.6 * torch.rand(shape, generator=gen)
            elif name.endswith("embed_tokens.weight"):
                val = torch.randn(shape, generator=gen) * 0.5
            elif name == "lm_head.weight":
                val = torch.randn(shape, generator=gen) * (3.0 / math.sqrt(shape[1]))
            elif name.endswith("mlp.gate.weight"):
                val = torch.randn(shape, generator=gen) * (2.0 / math.sqrt(shape[1]))
            elif name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
                val = torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
            elif name.endswith("patch_conv.weight"):
                val = torch.randn(shape, generator=gen) / math.sqrt(shape[1] * shape[2] * shape[3])
            elif name.endswith(".weight") and p.dim() == 2:
                val = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
            else:
                raise RuntimeError(f"no init rule for parameter {name} {shape}")
            p.copy_(val.to(p.dtype))


_OLDER_PREFIXES = [  # current name prefix -> the name transformers 4.x wrote
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
]


def write_checkpoint(case: PixCase, model, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if case.storage == "bf16_save_pretrained":
        model.to(torch.bfloat16).save_pretrained(out)
        return
    assert case.storage == "f32_model_names", case.storage
    tensors = {name: t.detach().float().contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = copy.deepcopy(model.config)
    cfg.dtype = "float32"
    cfg.to_json_file(str(out / "config.json"))


def read_tensors(case_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    with safe_open(str(case_dir / "model.safetensors"), framework="pt") as fh:
        for k in fh.keys():
            out[k] = fh.get_tensor(k)
    return out


def load_reference(case_dir: Path):
    """Float32 eager model holding exactly the weights on disk (read independently)."""
    raw = read_tensors(case_dir)
    sd = {}
    for name, t in raw.items():
        for cur, old in _OLDER_PREFIXES:
            if name.startswith(old) and not name.startswith(cur):
                name = cur + name[len(old):]
                break
        sd[name] = t.float()
    cfg = Mistral3Config.from_json_file(str(case_dir / "config.json"))
    cfg.dtype = torch.float32
    model = Mistral3ForConditionalGeneration(cfg).float().eval()
    make_eager(model)
    missing, unexpected = model.load_state_dict(sd, strict=True)
    assert not missing and not unexpected, (missing, unexpected)
    assert model.model.vision_tower.config._attn_implementation == "eager"
    # transformers' own loader must read the same weights from this layout.
    hf = Mistral3ForConditionalGeneration.from_pretrained(case_dir, dtype=torch.float32)
    for k, v in hf.state_dict().items():
        if not torch.equal(v.float(), sd[k]):
            raise RuntimeError(f"{case_dir.name}: from_pretrained disagrees on {k}")
    return model


# ----------------------------------------------------------------------------
# Inputs and reference computations
# ----------------------------------------------------------------------------


def make_images(seed: int) -> list[np.ndarray]:
    gen = torch.Generator().manual_seed(2_000_003 + seed)
    return [torch.randn((3, h, w), generator=gen).numpy().astype(np.float32) for h, w in IMAGE_SIZES]


def image_tokens(h: int, w: int, cell: int) -> list[int]:
    """[IMG] x cols then [IMG_BREAK] per row of the merged grid; the last break is [IMG_END]."""
    rows, cols = h // cell, w // cell
    ids = []
    for _ in range(rows):
        ids += [IMAGE_TOKEN] * cols + [IMG_BREAK]
    ids[-1] = IMG_END
    return ids


def make_prompt(seed: int, cell: int, vocab: int) -> list[int]:
    gen = torch.Generator().manual_seed(1_000_003 + seed)
    ordinary = [t for t in range(3, vocab) if t not in SPECIAL_IDS]

    def text(n):
        idx = torch.randint(0, len(ordinary), (n,), generator=gen).tolist()
        return [ordinary[i] for i in idx]

    ids = [1] + text(TEXT_RUN)
    for h, w in IMAGE_SIZES:
        ids += image_tokens(h, w, cell) + text(TEXT_RUN)
    return ids


def batch_pixels(images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images zero-padded to one [n, 3, H, W] batch, with their sizes (what the processor emits)."""
    hmax = max(i.shape[1] for i in images)
    wmax = max(i.shape[2] for i in images)
    pv = torch.zeros((len(images), 3, hmax, wmax), dtype=torch.float32)
    for k, img in enumerate(images):
        pv[k, :, : img.shape[1], : img.shape[2]] = torch.from_numpy(img)
    sizes = torch.tensor([[i.shape[1], i.shape[2]] for i in images], dtype=torch.long)
    return pv, sizes


@torch.no_grad()
def image_features(model, images: list[np.ndarray]) -> list[np.ndarray]:
    pv, sizes = batch_pixels(images)
    out = model.model.get_image_features(pixel_values=pv, image_sizes=sizes)
    batched = [f.float().numpy().astype(np.float32) for f in out.pooler_output]
    # Attention is per image (block-diagonal): one image at a time must agree.
    for k, img in enumerate(images):
        pv1, s1 = batch_pixels([img])
        alone = model.model.get_image_features(pixel_values=pv1, image_sizes=s1).pooler_output[0].numpy()
        if not np.allclose(alone, batched[k], rtol=0, atol=1e-5 * np.abs(alone).max()):
            raise RuntimeError("image features depend on the other images of the batch")
    return batched


@torch.no_grad()
def features_of_layer(model, images: list[np.ndarray], k: int) -> list[np.ndarray]:
    """hidden_states[k] of the vision tower, per image (pins down the index convention)."""
    pv, sizes = batch_pixels(images)
    out = model.model.vision_tower(pv, image_sizes=sizes, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.vision_config.num_hidden_layers + 1
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    return out.hidden_states[k][0]


@torch.no_grad()
def forward_logits(model, tokens: list[int], images: list[np.ndarray]) -> torch.Tensor:
    pv, sizes = batch_pixels(images)
    ids = torch.tensor([tokens], dtype=torch.long)
    return model(input_ids=ids, pixel_values=pv, image_sizes=sizes, use_cache=False).logits[0].float()


@torch.no_grad()
def router_expert_gap(model, tokens: list[int], images: list[np.ndarray]) -> float:
    """Smallest k-th vs (k+1)-th expert softmax score gap over tokens and MoE layers."""
    captured, hooks = [], []
    for layer in model.model.language_model.layers:
        gate = getattr(layer.mlp, "gate", None)
        if gate is not None:
            hooks.append(gate.register_forward_hook(lambda mod, inp, out: captured.append(out)))
    try:
        forward_logits(model, tokens, images)
    finally:
        for h in hooks:
            h.remove()
    k = model.config.text_config.num_experts_per_tok
    gap = math.inf
    for router_logits, _, _ in captured:
        srt = router_logits.float().softmax(-1).sort(dim=-1, descending=True).values
        gap = min(gap, float((srt[:, k - 1] - srt[:, k]).min()))
    return gap


@dataclass
class Result:
    meta: dict  # images.json
    greedy: dict | None  # greedy.json
    features: list[np.ndarray]
    logits: np.ndarray | None
    violations: list[str]


def compute_case(case: PixCase, seed: int, case_dir: Path) -> Result:
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    torch.manual_seed(seed)
    model = Mistral3ForConditionalGeneration(build_config(case)).float()
    make_eager(model)
    init_weights(model, seed)
    write_checkpoint(case, model, case_dir)
    del model
    ref = load_reference(case_dir)

    cfg = ref.config
    cell = cfg.vision_config.patch_size * cfg.spatial_merge_size
    images = make_images(seed)
    feats = image_features(ref, images)
    violations = []
    # The tensor the projector reads is hidden_states[vision_feature_layer]:
    # recompute the projector on it by hand as a cross-check of the index.
    n_layers = cfg.vision_config.num_hidden_layers
    hs = features_of_layer(ref, images[:1], cfg.vision_feature_layer)
    with torch.no_grad():
        proj = ref.model.multi_modal_projector(hs, torch.tensor([list(IMAGE_SIZES[0])])).numpy()
    if not np.allclose(proj, feats[0], rtol=0, atol=1e-6 * np.abs(feats[0]).max()):
        violations.append("features are not the projector of hidden_states[vision_feature_layer]")

    meta = {
        "description": case.description,
        "seed": seed,
        "storage": case.storage,
        "vision_feature_layer": cfg.vision_feature_layer,
        "vision_layers": n_layers,
        "image_token_index": IMAGE_TOKEN,
        "img_break": IMG_BREAK,
        "img_end": IMG_END,
        "engine_rel_tol": ENGINE_REL_TOL,
        "images": [],
    }
    for k, (img, f) in enumerate(zip(images, feats)):
        h, w = img.shape[1], img.shape[2]
        meta["images"].append({
            "pixels": f"pixels_{k}.npy",
            "features": f"features_{k}.npy",
            "height": h,
            "width": w,
            "rows": h // cell,
            "cols": w // cell,
            "tokens": (h // cell) * (w // cell),
            "max_abs_feature": float(np.abs(f).max()),
        })
    greedy_meta, logits_np = None, None
    if case.logits:
        prompt = make_prompt(seed, cell, cfg.text_config.vocab_size)
        meta["prompt"] = prompt
        seq, rows = list(prompt), []
        for _ in range(GREEDY_TOKENS):
            row = forward_logits(ref, seq, images)[-1]
            rows.append(row)
            seq.append(int(torch.argmax(row)))
        greedy = seq[len(prompt):]
        logits = forward_logits(ref, seq, images)
        logits_np = logits.numpy().astype(np.float32)
        max_abs = float(np.abs(logits_np).max())
        min_gap = min(m4.top2_gap(r) for r in rows)
        expert_gap = router_expert_gap(ref, seq, images)
        if logits[len(prompt) - 1: len(seq) - 1].argmax(-1).tolist() != greedy:
            violations.append("one-pass argmax differs from the greedy loop")
        if min_gap <= m4.MIN_TOP2_GAP_REL * max_abs:
            violations.append(f"min_top2_gap {min_gap:.3g} <= {m4.MIN_TOP2_GAP_REL} * max_abs_logit {max_abs:.3g}")
        if expert_gap <= m4.MIN_ROUTER_GAP:
            violations.append(f"router expert gap {expert_gap:.3g}")
        if len(set(greedy)) < m4.MIN_DISTINCT_GREEDY:
            violations.append(f"greedy has only {len(set(greedy))} distinct tokens")
        if IMAGE_TOKEN in greedy:
            violations.append("greedy continuation contains [IMG]")
        greedy_meta = {
            "prompt": prompt,
            "greedy": greedy,
            "n_tokens": len(seq),
            "vocab_size": int(logits_np.shape[1]),
            "max_abs_logit": max_abs,
            "min_top2_gap": min_gap,
            "min_router_expert_gap": expert_gap,
            "engine_rel_tol": ENGINE_REL_TOL,
        }
    return Result(meta=meta, greedy=greedy_meta, features=feats, logits=logits_np, violations=violations)


def write_outputs(res: Result, case_dir: Path, images: list[np.ndarray]) -> None:
    for k, (img, f) in enumerate(zip(images, res.features)):
        np.save(case_dir / f"pixels_{k}.npy", img)
        np.save(case_dir / f"features_{k}.npy", f)
    (case_dir / "images.json").write_text(json.dumps(res.meta, indent=2) + "\n")
    if res.greedy is not None:
        np.save(case_dir / "logits.npy", res.logits)
        (case_dir / "greedy.json").write_text(json.dumps(res.greedy, indent=2) + "\n")
    for f in case_dir.iterdir():  # safetensors writers create 0600 files
        f.chmod(0o644)


def generate(out: Path, names: list[str] | None) -> dict[str, Result]:
    results = {}
    for case in CASES:
        if names and case.name not in names:
            continue
        res = compute_case(case, case.seed, out / case.name)
        if res.violations:
            raise SystemExit(f"{case.name} (seed {case.seed}) violates checks: {res.violations}")
        write_outputs(res, out / case.name, make_images(case.seed))
        results[case.name] = res
    return results


# ----------------------------------------------------------------------------
# Golden comparison
# ----------------------------------------------------------------------------


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and float(np.abs(a - b).max()) <= GOLDEN_REL_TOL * max(float(np.abs(b).max()), 1e-30)


def compare(live: Path, golden: Path) -> list[str]:
    if not golden.exists():
        return [f"golden folder {golden} missing"]
    problems = []
    live_files = sorted(p.name for p in live.iterdir())
    golden_files = sorted(p.name for p in golden.iterdir())
    if live_files != golden_files:
        problems.append(f"files differ: live {live_files} vs golden {golden_files}")
    for name in live_files:
        a, b = live / name, golden / name
        if not b.exists():
            continue
        if name == "config.json":
            strip = m4._strip_config
            if strip(json.loads(a.read_text())) != strip(json.loads(b.read_text())):
                problems.append("config.json differs")
        elif name.endswith(".safetensors"):
            ta, tb = read_tensors(live), read_tensors(golden)
            if ta.keys() != tb.keys() or any(not torch.equal(ta[k], tb[k]) for k in ta):
                problems.append("tensors differ")
        elif name.endswith(".npy"):
            if not _close(np.load(a), np.load(b)):
                problems.append(f"{name} differs beyond {GOLDEN_REL_TOL} relative")
        elif name.endswith(".json"):
            ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
            for key in ("prompt", "greedy", "images"):
                if key in ja and ja.get(key) != jb.get(key):
                    # max_abs_feature is a float: compare the rest exactly, it within tolerance.
                    if key == "images" and _images_match(ja[key], jb.get(key)):
                        continue
                    problems.append(f"{name}: {key} differs")
    return problems


def _images_match(a, b) -> bool:
    if b is None or len(a) != len(b):
        return False
    for x, y in zip(a, b):
        fx, fy = x.get("max_abs_feature", 0.0), y.get("max_abs_feature", 0.0)
        if {k: v for k, v in x.items() if k != "max_abs_feature"} != {k: v for k, v in y.items() if k != "max_abs_feature"}:
            return False
        if abs(fx - fy) > GOLDEN_REL_TOL * max(abs(fy), 1e-30):
            return False
    return True


# ----------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------


def cmd_generate(args) -> int:
    out = Path(args.out)
    results = generate(out, args.case)
    for name, res in results.items():
        size = sum(f.stat().st_size for f in (out / name).iterdir())
        feats = ", ".join(f"{i['tokens']} tokens max {i['max_abs_feature']:.3f}" for i in res.meta["images"])
        extra = ""
        if res.greedy is not None:
            g = res.greedy
            extra = (f"; max|logit| {g['max_abs_logit']:.3f}, top2 gap/max {g['min_top2_gap'] / g['max_abs_logit']:.4f}, "
                     f"router gap {g['min_router_expert_gap']:.2e}, greedy {g['greedy']}")
        print(f"{name}: {size} bytes; {feats}{extra}")
    return 0


def cmd_verify_golden(args) -> int:
    golden = Path(args.golden)
    failed = False
    with tempfile.TemporaryDirectory(prefix="sirocco_pixtral_") as tmp:
        generate(Path(tmp), None)
        for case in CASES:
            problems = compare(Path(tmp) / case.name, golden / case.name)
            print(f"{case.name:<28} {'OK' if not problems else 'FAIL: ' + '; '.join(problems)}")
            failed |= bool(problems)
    return 1 if failed else 0


def cmd_find_seed(args) -> int:
    case = CASES_BY_NAME[args.case]
    with tempfile.TemporaryDirectory(prefix="sirocco_pixtral_") as tmp:
        for seed in range(args.start, args.start + args.count):
            res = compute_case(case, seed, Path(tmp) / case.name)
            print(f"seed {seed}: {'OK' if not res.violations else '; '.join(res.violations)}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write the cases and golden outputs")
    g.add_argument("--out", default=str(DEFAULT_GOLDEN))
    g.add_argument("--case", action="append", help="only this case (repeatable)")
    v = sub.add_parser("verify-golden", help="compare the live reference with the committed goldens")
    v.add_argument("--golden", default=str(DEFAULT_GOLDEN))
    f = sub.add_parser("find-seed", help="margin checks for a range of seeds")
    f.add_argument("case", choices=sorted(CASES_BY_NAME))
    f.add_argument("--start", type=int, default=0)
    f.add_argument("--count", type=int, default=10)
    args = ap.parse_args(argv)
    m4.setup_torch()
    return {"generate": cmd_generate, "verify-golden": cmd_verify_golden, "find-seed": cmd_find_seed}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
