#!/usr/bin/env python3
"""Encode throughput of Sirocco's tekken tokenizer next to mistral-common's and tiktoken's, same run, same corpora.

    .venv/bin/python tests/reference/text/tokenizer_throughput.py --bench build/tests/bench/tokenizer_bench

Corpora (written to a temporary folder, which the C++ benchmark reads with --corpus_dir):
  english       Python's reference documentation (pydoc_data.topics): real English prose
  code          Python standard library sources, first 1 MB in file-name order
  cjk           Chinese, Japanese and Korean text built from frequent characters, with punctuation (seeded)
  multilingual  the string goldens' prose in 15 non-Latin languages, emoji and mixed strings

Every number is single-threaded CPU time (the machine may be shared): the best of --repeats
runs of one encode call over the whole corpus, in MB/s of UTF-8 input. tiktoken is the same
vocabulary as tiktoken.Encoding(pat_str=<tekken pattern>, mergeable_ranks=<tekken ranks>),
which is exactly what mistral-common's Tekkenizer wraps (mistral-common adds the id shift).
The token counts of the three must agree, or the script fails.
"""

import argparse
import json
import random
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(HERE))

_FREQUENT_HANZI = ("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后"
                   "小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长"
                   "知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最"
                   "间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市"
                   "眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计")
_KANA = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんアイウエオカキクケコサシスセソ"
_HANGUL_WORDS = ["안녕하세요", "한국어", "서울", "대한민국", "사람", "시간", "오늘", "학교", "컴퓨터", "음식", "친구", "하지만"]


def corpora(size: int) -> dict[str, str]:
    import pydoc_data.topics

    out = {"english": "\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))}
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        code.append(text)
        total += len(text.encode())
        if total >= size:
            break
    out["code"] = "".join(code)
    rng = random.Random(11)
    parts, total = [], 0
    while total < size // 2:
        r = rng.random()
        if r < 0.6:
            s = "".join(rng.choice(_FREQUENT_HANZI) for _ in range(rng.randint(4, 30))) + rng.choice("，。、！？：")
        elif r < 0.85:
            s = "".join(rng.choice(_KANA + _FREQUENT_HANZI) for _ in range(rng.randint(3, 20))) + "。"
        else:
            s = " ".join(rng.choice(_HANGUL_WORDS) for _ in range(rng.randint(2, 8))) + ". "
        parts.append(s)
        total += len(s.encode())
        if rng.random() < 0.05:
            parts.append("\n")
    out["cjk"] = "".join(parts)
    import strings_reference
    manifest = json.loads((strings_reference.GOLDEN / "manifest.json").read_text())
    strings = strings_reference.read_strings(strings_reference.GOLDEN / "strings.bin", manifest["categories"])
    out["multilingual"] = "\n".join(t for c, t in strings if c in ("prose_other", "emoji", "mixed"))
    return out


def best_cpu_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", required=True, help="path of the tokenizer_bench binary")
    parser.add_argument("--tokenizer", default=str(ROOT / "third_party" / "tekken" / "tekken_240911.json"))
    parser.add_argument("--size", type=int, default=1_000_000, help="approximate corpus size in bytes")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import mistral_common
    import tiktoken
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    mc = Tekkenizer.from_file(args.tokenizer)
    data = json.loads(Path(args.tokenizer).read_text())
    # The same Encoding mistral-common builds, made here so tiktoken is timed without the wrapper.
    tt = tiktoken.Encoding("tekken", pat_str=data["config"]["pattern"],
                           mergeable_ranks=mc._tekken_token2id_nospecial, special_tokens={})
    texts = corpora(args.size)

    with tempfile.TemporaryDirectory() as tmp:
        for name, text in texts.items():
            (Path(tmp) / f"{name}.txt").write_text(text, encoding="utf-8")
        run = subprocess.run([args.bench, f"--tokenizer={args.tokenizer}", f"--corpus_dir={tmp}",
                              "--benchmark_filter=^encode/", f"--benchmark_repetitions={args.repeats}",
                              "--benchmark_report_aggregates_only=false", "--benchmark_format=json",
                              "--benchmark_min_time=0.2"], capture_output=True, text=True, check=True)
    sirocco: dict[str, float] = {}
    tokens_per_byte: dict[str, float] = {}
    for b in json.loads(run.stdout)["benchmarks"]:
        if b.get("run_type") != "iteration":
            continue
        name = b["name"].split("/")[1]
        sirocco[name] = max(sirocco.get(name, 0.0), b["bytes_per_second"] / 1e6)  # best repetition
        tokens_per_byte[name] = 1.0 / b["bytes_per_token"]

    rows = []
    for name, text in texts.items():
        size = len(text.encode())
        n_mc = len(mc.encode(text, bos=False, eos=False))
        n_tt = len(tt.encode(text))
        n_cc = round(tokens_per_byte[name] * size)
        if not n_mc == n_tt == n_cc:
            print(f"{name}: token counts differ: sirocco {n_cc}, tiktoken {n_tt}, mistral-common {n_mc}")
            return 1
        t_tt = best_cpu_seconds(lambda: tt.encode(text), args.repeats)
        t_mc = best_cpu_seconds(lambda: mc.encode(text, bos=False, eos=False), args.repeats)
        rows.append((name, size, n_tt, sirocco[name], size / t_tt / 1e6, size / t_mc / 1e6))

    print(f"tekken encode, single thread, MB/s of UTF-8 input (best of {args.repeats}; tiktoken "
          f"{tiktoken.__version__}, mistral-common {mistral_common.__version__})")
    print()
    print("| corpus | size | tokens | Sirocco | tiktoken | mistral-common | Sirocco / tiktoken | Sirocco / mistral-common |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, size, n, s, t, m in rows:
        print(f"| {name} | {size / 1e6:.2f} MB | {n} | {s:.1f} | {t:.1f} | {m:.1f} | {s / t:.2f}x | {s / m:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
