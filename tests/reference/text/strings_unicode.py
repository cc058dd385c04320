"""Which Unicode classes does tiktoken's pre-split regex see, code point by code point?

tiktoken (which mistral-common's Tekkenizer wraps) compiles the tekken pattern
with Rust's fancy-regex / regex crates; Sirocco compiles it with PCRE2. The
pattern only looks at a code point through the classes below, so two engines
split every text identically iff they put every code point in the same class
(and agree on the regex semantics, checked by the string goldens):

    LU  Lu, Lt          in [\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}] only
    LL  Ll              in [\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}] only
    LO  Lm, Lo          in both
    M   Mn, Mc, Me      in both, but not \\p{L}
    N   Nd, Nl, No      \\p{N}
    S   White_Space     \\s
    O   everything else

The class is observed, not assumed: five probe strings per code point are
encoded with a vocabulary made of the 256 bytes plus the probes themselves, so
a probe comes back as one token iff the regex kept it in one piece. Run with
CR and LF excluded (the pattern names them literally).

The result is (1) a run-length golden read by the C++ unit test, which runs
the same probes through Sirocco's pre-splitter for all 1.1M code points, and
(2) the table of code points PCRE2 10.42 (Unicode 14.0, the same tables as
this Python's unicodedata) does not know but tiktoken does (Unicode 16.0),
with their general category: Sirocco's pre-splitter shows PCRE2 a stand-in of
the same category in their place (engine/text/tekken_regex.h).
"""

import unicodedata

import regex
import tiktoken

PROBES = (
    lambda c: "a" + c,  # one piece iff c in [Ll Lm Lo M]
    lambda c: "A" + c,  # iff c in L or M
    lambda c: c + "Ab",  # iff c in [Lu Lt Lm Lo M], or c is not L/N (an optional prefix)
    lambda c: "!!" + c,  # iff c is neither L, N nor whitespace
    lambda c: " " + c,  # iff c is not N
)
# Probe outcomes (1 = one piece) -> class.
_OUTCOMES = {
    (0, 1, 1, 0, 1): "LU",
    (1, 1, 0, 0, 1): "LL",
    (1, 1, 1, 0, 1): "LO",
    (1, 1, 1, 1, 1): "M",
    (0, 0, 0, 0, 0): "N",
    (0, 0, 1, 0, 1): "S",
    (0, 0, 1, 1, 1): "O",
}
_GC_CLASS = {
    "Lu": "LU", "Lt": "LU", "Ll": "LL", "Lm": "LO", "Lo": "LO",
    "Mn": "M", "Mc": "M", "Me": "M", "Nd": "N", "Nl": "N", "No": "N",
}
# Unicode White_Space (stable since 6.3, when U+180E left it).
WHITE_SPACE = frozenset(
    [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F,
     0x3000])


def probed_code_points() -> list[int]:
    return [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and c not in (0x0A, 0x0D)]


def tiktoken_classes(pattern: str, batch: int = 1 << 16) -> dict[int, str]:
    """Class of every probed code point as tiktoken's regex sees it."""
    out: dict[int, str] = {}
    cps = probed_code_points()
    for start in range(0, len(cps), batch):
        chunk = cps[start:start + batch]
        ranks = {bytes([i]): i for i in range(256)}
        strings = []
        for c in chunk:
            for probe in PROBES:
                s = probe(chr(c))
                strings.append(s)
                ranks.setdefault(s.encode(), len(ranks))
        enc = tiktoken.Encoding("probe", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
        ids = enc.encode_batch(strings, num_threads=1)
        for i, c in enumerate(chunk):
            outcome = tuple(int(len(ids[i * len(PROBES) + j]) == 1) for j in range(len(PROBES)))
            if outcome not in _OUTCOMES:
                raise RuntimeError(f"U+{c:04X}: probe outcome {outcome} matches no class")
            out[c] = _OUTCOMES[outcome]
    return out


def unicode14_class(c: int) -> str:
    if c in WHITE_SPACE:
        return "S"
    return _GC_CLASS.get(unicodedata.category(chr(c)), "O")


def _general_category(c: int) -> str:
    """General category of c from the `regex` module (a newer Unicode than 14)."""
    for gc in _GC_CLASS:
        if regex.match(r"\p{%s}" % gc, chr(c)):
            return gc
    return "Cn"


def delta_ranges(classes: dict[int, str]) -> list[tuple[int, int, str]]:
    """Ranges tiktoken classifies differently from Unicode 14, with their category.

    Every difference must be a code point unassigned in Unicode 14 whose newer
    category (from `regex`) agrees with tiktoken's class; anything else means
    the engines disagree in a way a table of additions cannot fix.
    """
    ranges: list[list] = []
    assert unicodedata.unidata_version == "14.0.0", unicodedata.unidata_version
    for c in sorted(classes):
        old, new = unicode14_class(c), classes[c]
        if old == new:
            continue
        gc = _general_category(c)
        if unicodedata.category(chr(c)) != "Cn" or _GC_CLASS.get(gc) != new:
            raise RuntimeError(f"U+{c:04X}: Unicode 14 class {old}, tiktoken {new}, regex module {gc}")
        if ranges and ranges[-1][1] == c - 1 and ranges[-1][2] == gc:
            ranges[-1][1] = c
        else:
            ranges.append([c, c, gc])
    return [tuple(r) for r in ranges]


def write_classes_golden(classes: dict[int, str], path) -> None:
    """One line per run: first code point (hex) and class; gaps (CR, LF, surrogates) are skipped."""
    lines = ["# Class of every code point in tiktoken's pre-split regex (strings_unicode.py); runs from here",
             "# to the next line's code point. CR, LF and surrogates are not probed."]
    prev = None
    for c in sorted(classes):
        if classes[c] != prev:
            lines.append(f"{c:X} {classes[c]}")
            prev = classes[c]
    path.write_text("\n".join(lines) + "\n")


def write_delta_table(ranges, path, tiktoken_version: str) -> None:
    lines = [
        "// Generated by tests/reference/text/strings_reference.py unicode; do not edit.",
        f"// Code points tiktoken {tiktoken_version}'s regex engine (Unicode 16.0) assigns to a letter, mark or",
        "// number category that Unicode 14.0 (PCRE2 10.42's tables) leaves unassigned, in code point order:",
        "// {first, last, general category}. The pre-splitter replaces them by stand-ins PCRE2 knows.",
    ]
    for first, last, gc in ranges:
        lines.append(f"{{0x{first:04X}, 0x{last:04X}, \"{gc}\"}},")
    path.write_text("\n".join(lines) + "\n")
