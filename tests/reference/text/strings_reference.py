#!/usr/bin/env python3
"""Tekken tokenizer goldens from mistral-common, and the live check of Sirocco against them.

    .venv/bin/python tests/reference/text/strings_reference.py generate
    .venv/bin/python tests/reference/text/strings_reference.py check --sirocco build/tools/sirocco
    .venv/bin/python tests/reference/text/strings_reference.py unicode

generate  Encodes the generated strings (strings_corpus.py, >= 10,000 plus six
          of >= 100 KB) with `Tekkenizer.from_file(path).encode(s, bos=False,
          eos=False)` for every tekken file the package ships and for the
          derived v7/v11/v13/v15 files (built from engine/text/data/
          tekken_versions.json), decodes random id sequences with the IGNORE
          and KEEP policies, and writes strings_golden/ (format below). The C++
          test tests/unit/text/tekken_golden_test.cc reads it without Python.
check     Regenerates everything with mistral-common and requires it to equal
          the committed goldens byte for byte; builds the derived files with
          `sirocco make-tekken` and requires them to equal the Python-built
          ones and to load in mistral-common; runs `sirocco tokenize --text`
          and `sirocco detokenize` on a sample per file and requires identical
          ids and text; checks decode round trips.
unicode   Re-derives, from tiktoken itself, the class of every code point in
          the pre-split regex (strings_golden/unicode_classes.txt) and the
          Unicode-version patch table engine/text/tekken_unicode_delta.inc
          (strings_unicode.py).

Golden format (little-endian; "varint" is unsigned LEB128):
  manifest.json             versions, files, counts, per-file sha256
  strings.bin               b"SIRSTR01", varint n, then n x (varint category index,
                            varint segment count, segments); a segment is varint
                            repeat, varint byte length, UTF-8 bytes, and stands for
                            its bytes repeated (runs of one character of 32 or more
                            are one segment); categories listed in the manifest
  ids_<sha8>.bin            b"SIRIDS01", varint id offset, varint n, then n x (varint
                            count, count x varint (id - offset)): Encode(strings[i]);
                            the offset is the special-token count, which encoding
                            never produces; files whose ids are equal share one
  decode_<tokenizer>.bin    b"SIRDEC01", varint n, then n x (varint count, count x
                            varint id, varint len + bytes of decode(IGNORE), varint
                            len + bytes of decode(KEEP)); RAISE fails iff an id is
                            special
"""

import argparse
import hashlib
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
GOLDEN = HERE / "strings_golden"
SPEC = ROOT / "engine" / "text" / "data" / "tekken_versions.json"
DELTA_TABLE = ROOT / "engine" / "text" / "tekken_unicode_delta.inc"
DECODE_CASES_PER_FILE = 300
DECODE_SEED = 7

sys.path.insert(0, str(HERE))
import strings_corpus  # noqa: E402


# ---------------------------------------------------------------- file access


def shipped_files() -> list[Path]:
    import mistral_common
    data = Path(mistral_common.__file__).parent / "data"
    return sorted(data.glob("tekken_*.json"))


def build_derived(base: Path, version: str) -> dict:
    """The derived tekken file of `version` as a JSON object (what tekken_file.cc writes)."""
    spec = json.loads(SPEC.read_text())
    entry = spec["versions"][version]
    data = json.loads(base.read_text())
    data["config"]["version"] = version
    data["special_tokens"] = [
        {"rank": rank, "token_str": name if name is not None else f"<SPECIAL_{rank}>", "is_control": True}
        for rank, name in enumerate(entry["special_tokens"])
    ]
    data.pop("multimodal", None)
    if "image" in entry:
        data["image"] = entry["image"]
    if "model_settings_builder" in entry:
        data["model_settings_builder"] = entry["model_settings_builder"]
    else:
        data.pop("model_settings_builder", None)
    return data


def tokenizer_files(workdir: Path) -> list[tuple[str, Path, str]]:
    """(name, path, source) of every file checked: shipped ones, then derived ones."""
    files = [(p.stem, p, "shipped") for p in shipped_files()]
    spec = json.loads(SPEC.read_text())
    base = next(p for p in shipped_files() if p.name == spec["base_vocabulary"])
    for version in spec["versions"]:
        path = workdir / f"tekken_{version}.json"
        path.write_text(json.dumps(build_derived(base, version)))
        files.append((path.stem, path, "derived"))
    return files


# ------------------------------------------------------------------ encoding


def varint(n: int) -> bytes:
    assert n >= 0
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class Reader:
    def __init__(self, data: bytes, magic: bytes):
        assert data[:8] == magic, (data[:8], magic)
        self.data, self.pos = data, 8

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.data[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    def blob(self) -> bytes:
        n = self.varint()
        self.pos += n
        return self.data[self.pos - n:self.pos]


def segments(text: str, min_run: int = 32) -> list[tuple[int, str]]:
    """text as (repeat, unit) pairs: runs of one character become one pair."""
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(text):
        j = i
        while j < len(text) and text[j] == text[i]:
            j += 1
        if j - i >= min_run:
            out.append((j - i, text[i]))
            i = j
            continue
        # A literal stretch up to the next long run.
        k = i
        while k < len(text):
            r = k
            while r < len(text) and text[r] == text[k]:
                r += 1
            if r - k >= min_run:
                break
            k = r
        out.append((1, text[i:k]))
        i = k
    return out or [(1, "")]


def encode_strings(strings, categories) -> bytes:
    out = bytearray(b"SIRSTR01") + varint(len(strings))
    for category, text in strings:
        segs = segments(text)
        out += varint(categories.index(category)) + varint(len(segs))
        for repeat, unit in segs:
            b = unit.encode("utf-8")
            out += varint(repeat) + varint(len(b)) + b
    return bytes(out)


def encode_ids(all_ids, offset: int) -> bytes:
    out = bytearray(b"SIRIDS01") + varint(offset) + varint(len(all_ids))
    for ids in all_ids:
        out += varint(len(ids))
        for i in ids:
            out += varint(i - offset)
    return bytes(out)


def encode_decode_cases(cases) -> bytes:
    out = bytearray(b"SIRDEC01") + varint(len(cases))
    for ids, ignore, keep in cases:
        out += varint(len(ids))
        for i in ids:
            out += varint(i)
        for text in (ignore, keep):
            b = text.encode("utf-8")
            out += varint(len(b)) + b
    return bytes(out)


def read_ids(path: Path) -> list[list[int]]:
    r = Reader(path.read_bytes(), b"SIRIDS01")
    offset = r.varint()
    return [[offset + r.varint() for _ in range(r.varint())] for _ in range(r.varint())]


def read_strings(path: Path, categories) -> list[tuple[str, str]]:
    r = Reader(path.read_bytes(), b"SIRSTR01")
    out = []
    for _ in range(r.varint()):
        category = categories[r.varint()]
        parts = []
        for _ in range(r.varint()):
            repeat = r.varint()
            parts.append(r.blob().decode("utf-8") * repeat)
        out.append((category, "".join(parts)))
    return out


# ------------------------------------------------------------ decode cases


def decode_id_sequences(tok, rng: random.Random, n: int) -> list[list[int]]:
    """Random id sequences that cut characters, mix special tokens and emoji."""
    special = tok.num_special_tokens
    vocab = tok.n_words
    pieces = [tok.encode(s, bos=False, eos=False) for s in
              ["é", "中文字", "🎉", "👩\u200d💻", "Ωμέγα", "\u0085", "한국어", "a\u0301", "🇫🇷", "𝟎"]]
    byte_ids = [special + b for b in range(256)]
    sequences = []
    for _ in range(n):
        seq: list[int] = []
        for _ in range(rng.randint(1, 24)):
            r = rng.random()
            if r < 0.3:
                seq.append(rng.choice(byte_ids))  # lone bytes: UTF-8 lead and continuation bytes
            elif r < 0.45:
                seq.append(rng.choice(range(0, 40)) if rng.random() < 0.8 else rng.randrange(special))
            elif r < 0.75:
                seq.append(rng.randrange(special, vocab))
            else:
                p = rng.choice(pieces)
                a = rng.randrange(len(p))
                seq.extend(p[a:rng.randint(a + 1, len(p))])
        sequences.append(seq)
    return sequences


def decode_cases(tok, rng: random.Random, n: int):
    from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
    cases = []
    for ids in decode_id_sequences(tok, rng, n):
        cases.append((ids, tok.decode(ids, SpecialTokenPolicy.IGNORE), tok.decode(ids, SpecialTokenPolicy.KEEP)))
    return cases


# ---------------------------------------------------------------- generate


def compute_goldens(workdir: Path) -> dict[str, bytes]:
    """Every golden file's name -> bytes (manifest.json included)."""
    import mistral_common
    import tiktoken
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    strings = strings_corpus.generate_strings()
    categories = sorted({c for c, _ in strings})
    files: dict[str, bytes] = {"strings.bin": encode_strings(strings, categories)}
    manifest = {
        "generated_by": "tests/reference/text/strings_reference.py generate",
        "mistral_common": mistral_common.__version__,
        "tiktoken": tiktoken.__version__,
        "categories": categories,
        "strings": {"file": "strings.bin", "count": len(strings),
                    "long_inputs": sum(len(t.encode()) >= 100_000 for _, t in strings)},
        "tokenizers": [],
    }
    for name, path, source in tokenizer_files(workdir):
        tok = Tekkenizer.from_file(path)
        ids_blob = encode_ids([tok.encode(text, bos=False, eos=False) for _, text in strings],
                              tok.num_special_tokens)
        ids_name = f"ids_{hashlib.sha256(ids_blob).hexdigest()[:8]}.bin"
        files[ids_name] = ids_blob
        decode_name = f"decode_{name}.bin"
        files[decode_name] = encode_decode_cases(decode_cases(tok, random.Random(f"{DECODE_SEED}-{name}"),
                                                              DECODE_CASES_PER_FILE))
        manifest["tokenizers"].append({
            "name": name, "source": source, "version": tok.version.value,
            "num_special_tokens": tok.num_special_tokens, "vocab_size": tok.n_words,
            "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest() if source == "shipped" else None,
            "ids": ids_name, "decode": decode_name, "decode_cases": DECODE_CASES_PER_FILE,
        })
        print(f"{name}: {len(strings)} strings, {ids_name}", file=sys.stderr)
    files["manifest.json"] = (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode()
    return files


def cmd_generate(_args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        files = compute_goldens(Path(tmp))
    GOLDEN.mkdir(exist_ok=True)
    for old in GOLDEN.glob("*.bin"):
        if old.name not in files:
            old.unlink()
    for name, data in files.items():
        (GOLDEN / name).write_bytes(data)
    total = sum(len(d) for d in files.values())
    print(f"wrote {len(files)} files, {total / 1e6:.2f} MB, to {GOLDEN}")
    return 0


# ------------------------------------------------------------------- check


def run_sirocco(sirocco: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sirocco, *args], capture_output=True, timeout=120)


def cmd_check(args) -> int:
    from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    failures: list[str] = []
    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # 1. The goldens are what mistral-common produces today.
        (tmp / "py").mkdir()
        fresh = compute_goldens(tmp / "py")
        for name, data in fresh.items():
            committed = GOLDEN / name
            if not committed.exists() or committed.read_bytes() != data:
                failures.append(f"golden {name} differs from what mistral-common produces now (run generate)")
        print(f"goldens regenerated: {len(fresh)} files, {'identical' if not failures else 'DIFFERENT'}")

        strings = read_strings(GOLDEN / "strings.bin", manifest["categories"])
        spec = json.loads(SPEC.read_text())
        base = next(p for p in shipped_files() if p.name == spec["base_vocabulary"])
        rng = random.Random(args.seed)
        for entry in manifest["tokenizers"]:
            name = entry["name"]
            if entry["source"] == "shipped":
                path = next(p for p in shipped_files() if p.stem == name)
            else:
                # 2. The derived file as Sirocco writes it is the one Python builds, and loads in mistral-common.
                path = tmp / f"{name}.json"
                r = run_sirocco(args.sirocco, "make-tekken", "--base", str(base), "--version", entry["version"],
                                "--out", str(path))
                if r.returncode != 0:
                    failures.append(f"{name}: sirocco make-tekken failed: {r.stderr.decode()}")
                    continue
                if json.loads(path.read_text()) != build_derived(base, entry["version"]):
                    failures.append(f"{name}: sirocco make-tekken output differs from the Python-built file")
            tok = Tekkenizer.from_file(path)
            golden_ids = read_ids(GOLDEN / entry["ids"])
            # 3. Sirocco's CLI on a sample (argv cannot carry NUL; long inputs go in as one argument).
            sample = rng.sample([i for i, (_, t) in enumerate(strings) if "\0" not in t and len(t) < 100_000],
                                args.sample)
            sample.append(next(i for i, (_, t) in enumerate(strings) if len(t) >= 100_000 and "\0" not in t))
            bad = 0
            for i in sample:
                text = strings[i][1]
                r = run_sirocco(args.sirocco, "tokenize", "--tokenizer", str(path), "--text", text)
                got = json.loads(r.stdout) if r.returncode == 0 else None
                want = tok.encode(text, bos=False, eos=False)
                if want != golden_ids[i] or got is None or got["ids"] != want or got["text"] != text:
                    bad += 1
                    failures.append(f"{name}: string {i} ({strings[i][0]}): sirocco {got and got['ids'][:20]} "
                                    f"mistral-common {want[:20]}")
                if tok.decode(want, SpecialTokenPolicy.IGNORE) != text:
                    failures.append(f"{name}: mistral-common does not round-trip string {i}")
            # 4. Detokenize a sample of the decode cases with every policy.
            dec_sample = decode_id_sequences(tok, rng, args.sample)
            for ids in dec_sample:
                for policy in ("ignore", "keep", "raise"):
                    r = run_sirocco(args.sirocco, "detokenize", "--tokenizer", str(path), "--ids",
                                    ",".join(map(str, ids)), "--special", policy)
                    try:
                        want = tok.decode(ids, SpecialTokenPolicy(policy)) + "\n"
                    except ValueError:
                        want = None
                    got = r.stdout.decode("utf-8") if r.returncode == 0 else None
                    if got != want:
                        bad += 1
                        failures.append(f"{name}: detokenize {ids} --special {policy}: {got!r} != {want!r}")
            print(f"{name}: {len(sample)} tokenize + {3 * len(dec_sample)} detokenize calls, "
                  f"{'all identical' if not bad else f'{bad} DIFFERENT'}")
    for f in failures[:50]:
        print("FAIL", f)
    print("check:", "OK" if not failures else f"{len(failures)} failures")
    return 0 if not failures else 1


# ----------------------------------------------------------------- unicode


def cmd_unicode(_args) -> int:
    import strings_unicode
    import tiktoken
    pattern = json.loads(shipped_files()[0].read_text())["config"]["pattern"]
    classes = strings_unicode.tiktoken_classes(pattern)
    GOLDEN.mkdir(exist_ok=True)
    strings_unicode.write_classes_golden(classes, GOLDEN / "unicode_classes.txt")
    ranges = strings_unicode.delta_ranges(classes)
    strings_unicode.write_delta_table(ranges, DELTA_TABLE, tiktoken.__version__)
    print(f"{len(classes)} code points classified; {len(ranges)} ranges newer than Unicode 14 -> {DELTA_TABLE}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate")
    check = sub.add_parser("check")
    check.add_argument("--sirocco", required=True, help="path of the sirocco binary")
    check.add_argument("--sample", type=int, default=20, help="strings and id sequences per file sent to the CLI")
    check.add_argument("--seed", type=int, default=1)
    sub.add_parser("unicode")
    args = parser.parse_args()
    return {"generate": cmd_generate, "check": cmd_check, "unicode": cmd_unicode}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
