#!/usr/bin/env python3
"""Image decoding and preprocessing by Pillow + mistral-common, the reference for engine/image.

For every input file in golden_images/ the reference is what mistral-common
1.13 does to an image a client sends:

    image = Image.open(BytesIO(data))                   # Pillow, first frame
    rgb   = np.array(_convert_to_rgb(image))            # uint8 [H, W, 3]
    chw   = transform_image(image, (new_w, new_h))      # float32 [3, new_h, new_w]

and the goldens are `<name>.rgb.npy` (rgb) and `<name>.<W>x<H>.npy` (chw) for
one or two target sizes per input (downscale, upscale, non-square).

cv2.resize runs Intel IPP's resize when IPP is on (the opencv-python default,
so what mistral-common produces), and OpenCV's own separable resize when it is
off. The two differ by a few float32 ulps; IPP's result may also depend on the
CPU it picks a code path for. Sirocco reproduces OpenCV's own algorithm bit
for bit, so a few targets also get `<name>.<W>x<H>.generic.npy` (IPP off),
and every target records `ipp_vs_generic_max_abs_diff` in the manifest. The inputs
are small seeded images with structure (gradients, edges, noise) in every
format and mode Sirocco accepts: PNG gray / gray+alpha / RGB / RGBA / palette
with tRNS / 1-, 2-, 4- and 16-bit / interlaced (some written by the small PNG
writer below, since Pillow cannot write 16-bit RGB), JPEG baseline, progressive,
grayscale, 4:4:4 and CMYK, WebP lossy, lossy with alpha, lossless with alpha and
animated (first frame). Broken inputs (truncated, bad CRC, unknown format, zero
size) are listed with `"error": true` and no outputs. manifest.json lists every
case. tests/unit/image/image_test.cc checks Sirocco against the goldens
without Python.

    generate   write golden_images/ (inputs, outputs, manifest.json)
    check      re-derive every output from the committed inputs with Pillow +
               mistral-common and compare exactly with the committed goldens;
               also report inputs that today's encoders would write differently

Run it in the project's virtual environment (.venv/bin/python; needs numpy,
pillow, opencv-python-headless and mistral-common: tools/setup.sh --venv).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import struct
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from mistral_common.tokens.tokenizers.image import _convert_to_rgb, transform_image

OUT = Path(__file__).resolve().parent / "golden_images"
TOLERANCE = 1e-5  # as tests/unit/image: what IPP's CPU-specific paths may move

# ---------------------------------------------------------------- content


def pattern(w: int, h: int, seed: int, channels: int) -> np.ndarray:
    """Gradients, a sharp-edged disc, a sine texture and noise: [h, w, channels] uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = [
        x / max(w - 1, 1) * 255,
        y / max(h - 1, 1) * 255,
        128 + 110 * np.sin(x / 3.1 + seed) * np.cos(y / 4.7),
        (x + y) / max(w + h - 2, 1) * 255,
    ]
    disc = (x - w * 0.6) ** 2 + (y - h * 0.4) ** 2 < (min(w, h) * 0.25) ** 2
    out = np.empty((h, w, channels), np.float64)
    for c in range(channels):
        p = planes[(c + seed) % len(planes)] + rng.normal(0, 18, (h, w))
        p[disc] = 255 - p[disc] * 0.3
        out[..., c] = p
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def alpha_plane(w: int, h: int, seed: int) -> np.ndarray:
    """Partial alpha everywhere from 0 to 255, plus fully transparent and fully opaque blocks."""
    rng = np.random.default_rng(seed + 1000)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.hypot(x - w / 2, y - h / 2) / np.hypot(w / 2, h / 2)
    a = np.clip(255 * (1.1 - r) + rng.normal(0, 25, (h, w)), 0, 255)
    a[: h // 5, : w // 5] = 0
    a[-(h // 5) :, -(w // 5) :] = 255
    return np.rint(a).astype(np.uint8)


# ---------------------------------------------------------------- PNG writer (for what Pillow cannot write)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _pack_bits(row: np.ndarray, depth: int) -> bytes:
    per = 8 // depth
    v = np.zeros((len(row) + per - 1) // per * per, np.uint8)
    v[: len(row)] = row
    v = v.reshape(-1, per)
    out = np.zeros(len(v), np.uint8)
    for i in range(per):
        out |= v[:, i] << (8 - depth * (i + 1))
    return out.tobytes()


def _raw_rows(samples: np.ndarray, depth: int) -> list[bytes]:
    """samples: [h, w, channels] integer array -> packed scanlines (no filter byte)."""
    h = samples.shape[0]
    if depth == 16:
        return [samples[y].astype(">u2").tobytes() for y in range(h)]
    if depth == 8:
        return [samples[y].astype(np.uint8).tobytes() for y in range(h)]
    return [_pack_bits(samples[y].reshape(-1), depth) for y in range(h)]


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def write_png(samples: np.ndarray, depth: int, color_type: int, plte: bytes | None = None,
              trns: bytes | None = None, interlace: bool = False) -> bytes:
    h, w = samples.shape[:2]
    if samples.ndim == 2:
        samples = samples[..., None]
    if interlace:
        raw = b""
        for x0, y0, dx, dy in ADAM7:
            sub = samples[y0::dy, x0::dx]
            if sub.size:
                raw += b"".join(b"\x00" + r for r in _raw_rows(sub, depth))
    else:
        raw = b"".join(b"\x00" + r for r in _raw_rows(samples, depth))
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, int(interlace)))
    if plte is not None:
        out += _chunk(b"PLTE", plte)
    if trns is not None:
        out += _chunk(b"tRNS", trns)
    return out + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


# ---------------------------------------------------------------- cases


def pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def good_cases() -> list[tuple[str, str, bytes, list[tuple[int, int]]]]:
    """(name, extension, encoded bytes, target sizes (width, height))."""
    cases = []

    def add(name, ext, data, targets):
        cases.append((name, ext, data, targets))

    rgb = pattern(48, 36, 1, 3)
    add("png_rgb", "png", pil_bytes(Image.fromarray(rgb, "RGB"), "PNG"), [(28, 28), (56, 42)])
    rgba = np.dstack([pattern(40, 30, 2, 3), alpha_plane(40, 30, 2)])
    add("png_rgba", "png", pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG"), [(16, 12), (42, 21)])
    gray = pattern(33, 27, 3, 1)[..., 0]
    add("png_gray", "png", pil_bytes(Image.fromarray(gray, "L"), "PNG"), [(16, 12)])
    la = np.dstack([pattern(30, 26, 4, 1), alpha_plane(30, 26, 4)])
    add("png_gray_alpha", "png", pil_bytes(Image.fromarray(la, "LA"), "PNG"), [(16, 12)])
    # 8-bit palette: 200 entries, alpha for the first 120 (the rest opaque).
    rng = np.random.default_rng(5)
    plte = rng.integers(0, 256, (200, 3), dtype=np.uint8)
    idx = (pattern(36, 30, 5, 1)[..., 0].astype(np.int64) * 199 // 255).astype(np.uint8)
    trns = np.linspace(0, 255, 120).astype(np.uint8)
    add("png_palette_trns", "png", write_png(idx, 8, 3, plte.tobytes(), trns.tobytes()), [(12, 16)])
    # 4-bit palette, one fully transparent entry.
    idx4 = (pattern(25, 21, 6, 1)[..., 0] >> 4).astype(np.uint8)
    add("png_palette4_trns", "png",
        write_png(idx4, 4, 3, rng.integers(0, 256, (16, 3), dtype=np.uint8).tobytes(), bytes([255, 255, 0])),
        [(16, 12)])
    # 16-bit gray: Pillow's I;16 -> RGB clips at 255, so keep values around it.
    g16 = pattern(26, 22, 7, 1)[..., 0].astype(np.int64) * 3 + 1
    add("png_gray16", "png", write_png(g16.astype(np.uint16), 16, 0), [(16, 12)])
    # 16-bit gray with tRNS (Pillow compares the clipped 8-bit value with the key's low byte).
    add("png_gray16_trns", "png", write_png(g16.astype(np.uint16), 16, 0, trns=struct.pack(">H", 256 + 100)),
        [(16, 12)])
    rgb16 = pattern(27, 23, 8, 3).astype(np.uint16) * 257 + np.random.default_rng(8).integers(0, 257, (23, 27, 3))
    add("png_rgb16", "png", write_png(rgb16.astype(np.uint16), 16, 2), [(16, 12)])
    rgba16 = np.dstack([rgb16, alpha_plane(27, 23, 9).astype(np.uint16) * 257])
    add("png_rgba16", "png", write_png(rgba16.astype(np.uint16), 16, 6), [(16, 12)])
    la16 = np.dstack([pattern(24, 20, 10, 1)[..., 0].astype(np.uint16) * 257, alpha_plane(24, 20, 10).astype(np.uint16) * 257])
    add("png_gray_alpha16", "png", write_png(la16, 16, 4), [(16, 12)])
    gtrns = pattern(30, 24, 11, 1)[..., 0]
    key = int(gtrns[5, 5])
    add("png_gray_trns", "png", write_png(gtrns, 8, 0, trns=struct.pack(">H", key)), [(16, 12)])
    add("png_gray1", "png", write_png((pattern(35, 21, 12, 1)[..., 0] > 127).astype(np.uint8), 1, 0), [(16, 12), (42, 21)])
    add("png_gray2_trns", "png", write_png(pattern(23, 19, 13, 1)[..., 0] >> 6, 2, 0, trns=struct.pack(">H", 85)),
        [(16, 12)])
    add("png_rgb_interlaced", "png", write_png(pattern(37, 29, 14, 3), 8, 2, interlace=True), [(16, 12)])
    add("png_rgba_interlaced", "png",
        write_png(np.dstack([pattern(21, 18, 15, 3), alpha_plane(21, 18, 15)]), 8, 6, interlace=True), [(16, 12)])
    # RGB with a tRNS key: mistral-common keeps RGB as is, so the key is ignored.
    rgbk = pattern(20, 20, 16, 3)
    add("png_rgb_trns", "png", write_png(rgbk, 8, 2, trns=struct.pack(">HHH", *rgbk[0, 0])), [(16, 12)])

    jrgb = Image.fromarray(pattern(48, 40, 20, 3), "RGB")
    add("jpeg_baseline", "jpg", pil_bytes(jrgb, "JPEG", quality=90), [(28, 42)])
    add("jpeg_progressive", "jpg", pil_bytes(jrgb, "JPEG", quality=85, progressive=True), [(16, 12)])
    add("jpeg_444", "jpg", pil_bytes(jrgb, "JPEG", quality=95, subsampling=0), [(16, 12)])
    add("jpeg_422", "jpg", pil_bytes(Image.fromarray(pattern(35, 29, 21, 3), "RGB"), "JPEG", quality=80,
                                     subsampling=1), [(16, 12)])
    add("jpeg_gray", "jpg", pil_bytes(Image.fromarray(pattern(41, 31, 22, 1)[..., 0], "L"), "JPEG", quality=90),
        [(16, 12)])
    add("jpeg_cmyk", "jpg", pil_bytes(Image.fromarray(pattern(32, 24, 23, 4), "CMYK"), "JPEG", quality=90),
        [(16, 12)])

    wrgb = Image.fromarray(pattern(44, 34, 30, 3), "RGB")
    add("webp_lossy", "webp", pil_bytes(wrgb, "WEBP", quality=80), [(16, 12), (56, 14)])
    wrgba = Image.fromarray(np.dstack([pattern(40, 32, 31, 3), alpha_plane(40, 32, 31)]), "RGBA")
    add("webp_lossy_alpha", "webp", pil_bytes(wrgba, "WEBP", quality=75), [(16, 12)])
    add("webp_lossless_alpha", "webp", pil_bytes(wrgba, "WEBP", lossless=True), [(16, 12)])
    frames = [Image.fromarray(np.dstack([pattern(30, 24, 32 + i, 3), alpha_plane(30, 24, 32 + i)]), "RGBA")
              for i in range(2)]
    add("webp_animated", "webp", pil_bytes(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                                           duration=100, lossless=True), [(16, 12)])
    return cases


def error_cases(good: dict[str, bytes]) -> list[tuple[str, str, bytes, str]]:
    """(name, extension, bytes, why): inputs Sirocco must reject."""
    png = good["png_rgb"]
    idat = png.find(b"IDAT")
    bad_crc = bytearray(png)
    bad_crc[idat + 10] ^= 0x55
    zero = bytearray(png[:33])
    zero[16:20] = b"\0\0\0\0"
    zero[29:33] = struct.pack(">I", zlib.crc32(bytes(zero[12:29])) & 0xFFFFFFFF)
    zero = bytes(zero) + png[33:]
    jpg = good["jpeg_baseline"]
    webp = good["webp_lossy"]
    return [
        ("err_png_truncated", "png", png[: idat + 40], "PNG cut inside the image data"),
        ("err_png_bad_crc", "png", bytes(bad_crc), "PNG image data with a flipped byte (CRC mismatch)"),
        ("err_png_zero_width", "png", zero, "PNG whose header says width 0"),
        ("err_png_header_only", "png", png[:20], "PNG signature and part of the header"),
        ("err_jpeg_truncated", "jpg", jpg[: len(jpg) // 2], "JPEG cut in the middle of the scan"),
        ("err_jpeg_header_only", "jpg", jpg[:200], "JPEG cut before the frame header ends"),
        ("err_webp_truncated", "webp", webp[: len(webp) // 2], "WebP cut in the middle"),
        ("err_unknown", "bin", b"GIF89a" + bytes(range(64)), "a format Sirocco does not read (GIF)"),
        ("err_text", "txt", b"this is not an image\n", "plain text"),
        ("err_empty", "bin", b"", "no bytes at all"),
    ]


# ---------------------------------------------------------------- reference


def transform(data: bytes, size: tuple[int, int], ipp: bool) -> np.ndarray:
    """transform_image on a freshly opened image; `ipp` switches OpenCV's IPP backend."""
    cv2.ipp.setUseIPP(ipp)
    try:
        return np.asarray(transform_image(Image.open(io.BytesIO(data)), size), dtype=np.float32)
    finally:
        cv2.ipp.setUseIPP(True)


def reference(data: bytes, targets: list[tuple[int, int]]) -> tuple[str, np.ndarray, dict]:
    image = Image.open(io.BytesIO(data))
    mode = image.mode
    rgb = np.array(_convert_to_rgb(image))
    outs = {size: transform(data, size, ipp=True) for size in targets}
    return mode, rgb, outs


# Targets also written with IPP off (OpenCV's own resize, which Sirocco
# reproduces bit for bit): fully vectorised rows, rows with a scalar tail.
GENERIC_GOLDENS = {("png_rgb", 28, 28), ("png_rgba", 42, 21), ("jpeg_baseline", 28, 42)}


def pillow_error(data: bytes) -> str | None:
    try:
        image = Image.open(io.BytesIO(data))
        np.array(_convert_to_rgb(image))
        return None
    except Exception as e:  # noqa: BLE001 - recorded, not handled
        return re.sub(r" <.* at 0x[0-9a-f]+>", "", f"{type(e).__name__}: {e}")


def derive(cases, errors) -> tuple[dict, dict[str, bytes]]:
    """The manifest and every file's bytes (inputs and .npy outputs)."""
    files: dict[str, bytes] = {}
    manifest = {"reference": "Pillow Image.open + mistral_common _convert_to_rgb / transform_image",
                "cases": []}
    for name, ext, data, targets in cases:
        mode, rgb, outs = reference(data, targets)
        entry = {"name": name, "file": f"{name}.{ext}", "pillow_mode": mode,
                 "width": int(rgb.shape[1]), "height": int(rgb.shape[0]), "rgb": f"{name}.rgb.npy",
                 "targets": []}
        files[entry["file"]] = data
        files[entry["rgb"]] = npy_bytes(rgb)
        for (w, h), arr in outs.items():
            assert arr.shape == (3, h, w) and arr.dtype == np.float32
            fname = f"{name}.{w}x{h}.npy"
            files[fname] = npy_bytes(arr)
            generic = transform(data, (w, h), ipp=False)
            target = {"width": w, "height": h, "file": fname,
                      "ipp_vs_generic_max_abs_diff": float(np.max(np.abs(arr - generic)))}
            if (name, w, h) in GENERIC_GOLDENS:
                target["generic_file"] = f"{name}.{w}x{h}.generic.npy"
                files[target["generic_file"]] = npy_bytes(generic)
            entry["targets"].append(target)
        manifest["cases"].append(entry)
    for name, ext, data, why in errors:
        entry = {"name": name, "file": f"{name}.{ext}", "error": True, "why": why,
                 "pillow": pillow_error(data) or "opens it"}
        files[entry["file"]] = data
        manifest["cases"].append(entry)
    files["manifest.json"] = (json.dumps(manifest, indent=1) + "\n").encode()
    return manifest, files


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr))
    return buf.getvalue()


def generate() -> int:
    cases = good_cases()
    good = {name: data for name, _, data, _ in cases}
    _, files = derive(cases, error_cases(good))
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        if old.name not in files:
            old.unlink()
    for name, data in files.items():
        (OUT / name).write_bytes(data)
    total = sum(len(d) for d in files.values())
    print(f"wrote {len(files)} files, {total} bytes, to {OUT}")
    return 0


def check() -> int:
    manifest = json.loads((OUT / "manifest.json").read_text())
    failures = 0
    for entry in manifest["cases"]:
        data = (OUT / entry["file"]).read_bytes()
        if entry.get("error"):
            continue
        targets = [(t["width"], t["height"]) for t in entry["targets"]]
        mode, rgb, outs = reference(data, targets)
        want = np.load(OUT / entry["rgb"])
        if mode != entry["pillow_mode"] or rgb.shape != want.shape or not np.array_equal(rgb, want):
            print(f"FAIL {entry['name']}: decoded RGB differs")
            failures += 1
        for t in entry["targets"]:
            want = np.load(OUT / t["file"])
            got = outs[(t["width"], t["height"])]
            diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
            # IPP picks its code path by CPU: another machine may round differently.
            if diff > TOLERANCE:
                print(f"FAIL {t['file']}: max |diff| {diff}")
                failures += 1
            elif diff != 0.0:
                print(f"note: {t['file']}: max |diff| {diff} (IPP on this CPU rounds differently)")
            if "generic_file" in t:
                got = transform(data, (t["width"], t["height"]), ipp=False)
                if not np.array_equal(got, np.load(OUT / t["generic_file"])):
                    print(f"FAIL {t['generic_file']}: OpenCV's generic resize differs")
                    failures += 1
    # The inputs themselves come from today's encoders (zlib, libjpeg, libwebp):
    # a difference there is worth knowing but is not a reference failure.
    cases = good_cases()
    good = {name: data for name, _, data, _ in cases}
    for name, ext, data, _ in cases:
        if (OUT / f"{name}.{ext}").read_bytes() != data:
            print(f"note: {name}.{ext} would be encoded differently today (goldens still valid)")
    for name, ext, data, _ in error_cases(good):
        if (OUT / f"{name}.{ext}").read_bytes() != data:
            print(f"note: {name}.{ext} would be written differently today")
    print(f"{len(manifest['cases'])} cases, {failures} failures")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["generate", "check"])
    args = parser.parse_args()
    return generate() if args.command == "generate" else check()


if __name__ == "__main__":
    sys.exit(main())
