"""The generated strings of the tokenizer goldens: deterministic (seeded), many
scripts, emoji, combining marks, code, whitespace runs, numbers, mixed case,
special-token-like text, random code points (including those newer Unicode
versions assigned) and a few inputs of 100 KB and more.

Pure Python, no third-party modules: `generate_strings()` is the whole corpus,
a list of (category, text).
"""

import random

SEED = 20240911

# Word lists: a few real words per language, enough for plausible prose.
_WORDS = {
    "en": "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
          "word but not what all were we when your can said there use an each which she do how their if will up "
          "other about out many then them these so some her would make like him into time has look two more write "
          "go see number no way could people my than first water been call who oil its now find long down day did "
          "get come made may part tokenizer streaming inference latency throughput cache".split(),
    "fr": "le la les des une été être où déjà garçon français hôpital août noël cœur œuvre très naïve façade élève "
          "à côté crème brûlée château forêt fenêtre".split(),
    "de": "der die das über Straße Größe schön Mädchen Fußgängerübergang Bücher öffnen Äpfel Übermut heißen "
          "Grüße Donaudampfschifffahrtsgesellschaft".split(),
    "es": "el la los niño año mañana corazón canción pingüino cigüeña ¿qué ¡hola! señor jalapeño".split(),
    "pl": "zażółć gęślą jaźń źdźbło łódź Kraków żółw pięć gęś".split(),
    "vi": "Tiếng Việt có dấu người học trường ngôn ngữ phở đường nước xin chào cảm ơn".split(),
    "tr": "İstanbul ılık şişe çiğdem ğüzel Iğdır kırmızı".split(),
    "pt": "ação coração não pão irmã avô".split(),
    "ru": "Привет мир как дела съешь же ещё этих мягких французских булок да выпей чаю Ёлка".split(),
    "uk": "Україна їжак ґанок пʼять".split(),
    "el": "Γειά σου κόσμε ξεσκεπάζω την ψυχοφθόρα βδελυγμία Σίσυφος ΑΘΗΝΑ".split(),
    "ar": "مرحبا بالعالم اللغة العربية كتاب مدرسة السلام عليكم".split(),
    "he": "שלום עולם עברית ספר בית הספר".split(),
    "hi": "नमस्ते दुनिया हिन्दी भाषा क्षत्रिय ज्ञान".split(),
    "th": "สวัสดีชาวโลก ภาษาไทย กรุงเทพมหานคร".split(),
    "zh": "你好世界 中文 汉字 我们 今天 天气 很好 人工智能 模型 分词器".split(),
    "ja": "こんにちは世界 日本語 カタカナ ひらがな 東京 ラーメン".split(),
    "ko": "안녕하세요 세계 한국어 서울 대한민국".split(),
    "hy": "Բարեւ աշխարհ".split(),
    "ka": "გამარჯობა სამყარო".split(),
    "bn": "হ্যালো বিশ্ব বাংলা".split(),
    "ta": "வணக்கம் உலகம் தமிழ்".split(),
    "am": "ሰላም ዓለም".split(),
}

# Code point ranges by script, for random words.
_SCRIPTS = {
    "latin_ext": [(0x00C0, 0x024F), (0x1E00, 0x1EFF)],
    "cyrillic": [(0x0400, 0x04FF)],
    "greek": [(0x0370, 0x03FF), (0x1F00, 0x1FFF)],
    "arabic": [(0x0600, 0x06FF), (0x0750, 0x077F)],
    "hebrew": [(0x0590, 0x05FF)],
    "devanagari": [(0x0900, 0x097F)],
    "thai": [(0x0E00, 0x0E7F)],
    "cjk": [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF)],
    "kana": [(0x3040, 0x30FF)],
    "hangul": [(0xAC00, 0xD7A3), (0x1100, 0x11FF)],
    "armenian": [(0x0530, 0x058F)],
    "georgian": [(0x10A0, 0x10FF)],
    "bengali": [(0x0980, 0x09FF)],
    "tamil": [(0x0B80, 0x0BFF)],
    "ethiopic": [(0x1200, 0x137F)],
    "mongolian": [(0x1800, 0x18AF)],
    "tibetan": [(0x0F00, 0x0FFF)],
}

_EMOJI = ("😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍🤩😘😗☺😚😙🥲😋😛😜🤪😝🤑🤗🤭🤫🤔🤐🤨😐😑😶😏😒🙄😬🤥😌😔😪🤤😴😷"
          "🤒🤕🤢🤮🤧🥵🥶🥴😵🤯🤠🥳🥸😎🤓🧐😕😟🙁☹😮😯😲😳🥺😦😧😨😰😥😢😭😱😖😣😞😓😩😫🥱😤😡😠🤬😈👿💀☠💩🤡"
          "👹👺👻👽👾🤖🎉🎊🎈🔥✨⭐🌟💫💥💯✅❌❤🧡💛💚💙💜🖤🤍🤎💔👍👎👏🙌🙏🤝💪🦾🧠🫀🫁🦷🦴👀👁👅👄🌍🌎🌏🚀🛸🎸🎹🥁🧪🧬")
_ZWJ_SEQUENCES = [
    "👨\u200d👩\u200d👧\u200d👦", "👩\u200d❤\ufe0f\u200d👨", "👩\u200d💻", "👨\u200d🚀", "🧑\u200d🔬", "🏳\ufe0f\u200d🌈",
    "🏴\u200d☠\ufe0f", "👁\ufe0f\u200d🗨\ufe0f", "🐻\u200d❄\ufe0f", "🧑\u200d🤝\u200d🧑", "❤\ufe0f\u200d🔥",
]
_SKIN_TONES = ["\U0001F3FB", "\U0001F3FC", "\U0001F3FD", "\U0001F3FE", "\U0001F3FF"]
_TONED_BASES = "👋🤚🖐✋🖖👌🤌🤏✌🤞🫰🤟🤘🤙👈👉👆🖕👇☝👍👎✊👊🤛🤜👏🙌👐🤲🙏✍💅🤳💪👂👃👶🧒👦👧🧑👱👨🧔👩🧓👴👵"
_FLAGS = ["🇫🇷", "🇩🇪", "🇯🇵", "🇺🇸", "🇧🇷", "🇮🇳", "🇺🇦", "🇪🇺", "🏴\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F"]
_KEYCAPS = ["1\ufe0f\u20e3", "#\ufe0f\u20e3", "*\u20e3", "🔟"]

_SPECIAL_LIKE = [
    "<s>", "</s>", "<unk>", "<pad>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[IMG]", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]",
    "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]", "[ARGS]", "[CALL_ID]", "[THINK]", "[/THINK]",
    "[MODEL_SETTINGS]", "[/MODEL_SETTINGS]", "<SPECIAL_12>", "<SPECIAL_999>", "<SPECIAL_1000>", "<|endoftext|>",
    "<|im_start|>", "[INST", "INST]", "</s", "<s", "[/", "[[INST]]", "\\[INST\\]", "<<SYS>>",
]

_SPACES = [" ", "  ", "\t", "\n", "\r\n", "\r", "\n\n", "\x0b", "\x0c", "\u00a0", "\u2000", "\u2003", "\u2009",
           "\u200a", "\u3000", "\u0085", "\u2028", "\u2029", "\u202f", "\u205f", "\u1680", "\u180e", "\u200b",
           "\ufeff", "\u00ad", " \t", "\t\t\t", "    ", "\r\n\r\n", " \n", "\n "]

_COMBINING = [(0x0300, 0x036F), (0x1AB0, 0x1ACE), (0x1DC0, 0x1DFF), (0x20D0, 0x20F0), (0xFE20, 0xFE2F)]

_CODE_TEMPLATES = [
    "def {f}({a}, {b}=None):\n    \"\"\"{doc}\"\"\"\n    if {a} is None:\n        return []\n    return [{a} * i for i in range({n})]\n",
    "for (int i = 0; i < {n}; ++i) {{\n\t{a}[i] = {b}[i] * {n2};\n}}\n",
    "const {a} = async ({b}) => {{\n  const res = await fetch(`/api/{f}/${{{b}}}`);\n  return res.json();\n}};",
    "{{\"{a}\": {n}, \"{b}\": [true, false, null], \"{f}\": {{\"nested\": \"{doc}\"}}}}",
    "<div class=\"{a}\"><span id='{b}'>{doc}</span>&nbsp;&amp;</div>",
    "SELECT {a}, COUNT(*) FROM {b} WHERE {f} > {n} GROUP BY {a} ORDER BY 2 DESC;",
    "if [ -f \"${a}\" ]; then\n  echo \"{doc}\" | grep -E '^[a-z]+$' >> /tmp/{b}.log 2>&1\nfi",
    "fn {f}<'a>({a}: &'a str) -> Result<Vec<u8>, Box<dyn Error>> {{ Ok({a}.bytes().collect()) }}",
    "#include <{a}.h>\n\nint main(int argc, char** argv) {{\n  std::printf(\"%d\\n\", {n});\n  return 0;\n}}\n",
    "    x = np.linspace(0, {n}, {n2})  # {doc}\n    y = x ** 2 - 3*x + 1e-{n3}\n",
    "/^(?:[a-z0-9!#$%&'*+/=?^_`{{|}}~-]+)@{a}\\.com$/i",
    "    \t  return {a}->{b}[{n}] != nullptr && {f}(&{a}) == 0x{hx};  \n",
]
_IDENTIFIERS = ["x", "data", "user_id", "maxTokens", "HTTPServer", "_private", "__init__", "i", "kv_cache",
                "blockTable", "CONSTANT_VALUE", "getX", "parseJSON", "tmp2", "αβγ", "naïve_café", "变量", "ñandú"]


def _rand_script_word(rng: random.Random, script: str) -> str:
    ranges = _SCRIPTS[script]
    out = []
    for _ in range(rng.randint(1, 9)):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def _sentence(rng: random.Random, lang: str) -> str:
    words = [rng.choice(_WORDS[lang]) for _ in range(rng.randint(2, 14))]
    if rng.random() < 0.5:
        words[0] = words[0][:1].upper() + words[0][1:]
    text = " ".join(words)
    return text + rng.choice([".", "!", "?", ",", ";", "", "…", "。", "؟", " :", "..."])


def _emoji(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.35:
        return rng.choice(_EMOJI)
    if r < 0.55:
        return rng.choice(_ZWJ_SEQUENCES)
    if r < 0.75:
        return rng.choice(_TONED_BASES) + rng.choice(_SKIN_TONES)
    if r < 0.9:
        return rng.choice(_FLAGS)
    return rng.choice(_KEYCAPS)


def _combining(rng: random.Random) -> str:
    base = rng.choice("aeiouAEIOUnczgxyəαωиж한中 1!")
    marks = []
    for _ in range(rng.randint(1, 6)):
        lo, hi = rng.choice(_COMBINING)
        marks.append(chr(rng.randint(lo, hi)))
    return base + "".join(marks)


def _code(rng: random.Random) -> str:
    t = rng.choice(_CODE_TEMPLATES)
    return t.format(f=rng.choice(_IDENTIFIERS), a=rng.choice(_IDENTIFIERS), b=rng.choice(_IDENTIFIERS),
                    doc=_sentence(rng, rng.choice(["en", "fr", "zh", "ru"])), n=rng.randint(0, 10 ** 6),
                    n2=rng.randint(0, 99), n3=rng.randint(1, 9), hx=f"{rng.getrandbits(32):08x}")


def _number(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.25:
        return str(rng.randint(0, 10 ** rng.randint(1, 40)))
    if r < 0.35:
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(50, 300)))
    if r < 0.5:
        return f"{rng.uniform(-1e6, 1e6):,.{rng.randint(0, 6)}f}"
    if r < 0.6:
        return f"{rng.random():.3e}" + rng.choice(["", " ", "%", " km/h", "€", "$"])
    if r < 0.7:
        return f"+33 {rng.randint(1, 9)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}"
    if r < 0.8:
        return f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00Z"
    digit_sets = ["٠١٢٣٤٥٦٧٨٩", "०१२३४५६७८९", "０１２３４５６７８９", "½¾⅓²³¹⁴⁵", "ⅠⅡⅢⅣⅻↂ", "①②③⑩⑳", "𝟎𝟏𝟐𝟗", "༠༡༢"]
    digits = rng.choice(digit_sets)
    return "".join(rng.choice(digits) for _ in range(rng.randint(1, 12)))


def _cased(rng: random.Random) -> str:
    word = rng.choice(_WORDS["en"] + _WORDS["de"] + _WORDS["el"] + _WORDS["tr"] + _WORDS["ru"])
    r = rng.random()
    if r < 0.2:
        return word.upper()
    if r < 0.4:
        return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in word)
    if r < 0.6:
        parts = [rng.choice(_WORDS["en"]) for _ in range(rng.randint(2, 5))]
        return parts[0] + "".join(p.capitalize() for p in parts[1:])
    if r < 0.7:
        return rng.choice(["ǅemal", "ǈubljana", "ǋ", "ᾈ", "ΣΊΣΥΦΟΣ", "İIıi", "ẞtraße", "ﬁnance", "Ǆ", "ǲ"])
    return word.capitalize() + rng.choice(["ABC", "Xyz", "_ID", "2Go", "'S", "’s", "-Ünïcödé"])


def _random_code_point(rng: random.Random, newer: list[tuple[int, int]]) -> str:
    r = rng.random()
    if r < 0.3:
        c = rng.randint(0x20, 0xFFFD)
    elif r < 0.5:
        c = rng.randint(0x10000, 0x10FFFF)
    elif r < 0.7 and newer:
        lo, hi = rng.choice(newer)
        c = rng.randint(lo, hi)
    elif r < 0.8:
        c = rng.choice([0x00, 0x01, 0x07, 0x1B, 0x1F, 0x7F, 0x80, 0x85, 0x9F, 0xAD, 0x200B, 0x200C, 0x200D, 0x200E,
                        0x2066, 0xFEFF, 0xFFFE, 0xFFFF, 0x1FFFE, 0x10FFFF, 0xE000, 0xF8FF, 0xF0000, 0xE0001,
                        0xFFF9, 0xFFFC, 0xFFFD, 0x034F, 0x180E, 0x3164, 0x115F, 0xE0100])
    else:
        c = rng.randint(0x0, 0x2FFFF)
    if 0xD800 <= c <= 0xDFFF:
        c = 0xFFFD
    return chr(c)


# Code point ranges added in Unicode 15.0-17.0 (a sample per version), where
# regex engines built on different Unicode tables disagree.
NEWER_UNICODE = [
    (0x0897, 0x0897), (0x0CF3, 0x0CF3), (0x0ECE, 0x0ECE), (0x1C89, 0x1C8A), (0xA7CB, 0xA7DC), (0x105C0, 0x105F3),
    (0x10D40, 0x10D8F), (0x10EC2, 0x10EC4), (0x10EFC, 0x10EFF), (0x11200, 0x1123F), (0x113B8, 0x113E2),
    (0x11B00, 0x11B09), (0x11BC0, 0x11BF9), (0x11F00, 0x11F5A), (0x1342F, 0x1345F), (0x16100, 0x16139),
    (0x16D40, 0x16D79), (0x1B132, 0x1B132), (0x1B155, 0x1B155), (0x1CC00, 0x1CCF9), (0x1DF25, 0x1DF2A),
    (0x1E030, 0x1E08F), (0x1E4D0, 0x1E4F9), (0x1E5D0, 0x1E5FF), (0x1F7D9, 0x1F7D9), (0x2B739, 0x2B73F),
    (0x2EBF0, 0x2EE5D), (0x31350, 0x323AF), (0x323B0, 0x3347F), (0x10940, 0x10959), (0x16EA0, 0x16EDF),
    (0x1E6C0, 0x1E6FF), (0x18D00, 0x18D1E),
]


def generate_strings() -> list[tuple[str, str]]:
    rng = random.Random(SEED)
    out: list[tuple[str, str]] = []

    def add(category: str, n: int, make) -> None:
        for _ in range(n):
            out.append((category, make()))

    # Every ASCII character alone, and the empty string.
    out.append(("edge", ""))
    for c in range(128):
        out.append(("edge", chr(c)))
    add("prose_latin", 1200, lambda: " ".join(_sentence(rng, rng.choice(["en", "en", "fr", "de", "es", "pl", "vi",
                                                                          "tr", "pt"]))
                                              for _ in range(rng.randint(1, 3))))
    add("prose_other", 1000, lambda: " ".join(_sentence(rng, rng.choice(["ru", "uk", "el", "ar", "he", "hi", "th",
                                                                          "zh", "ja", "ko", "hy", "ka", "bn", "ta",
                                                                          "am"]))
                                              for _ in range(rng.randint(1, 3))))
    add("scripts", 1300, lambda: rng.choice(["", " "]).join(
        _rand_script_word(rng, rng.choice(list(_SCRIPTS))) for _ in range(rng.randint(1, 8))))
    add("emoji", 1000, lambda: rng.choice(["", " ", "  ", "\n"]).join(
        _emoji(rng) if rng.random() < 0.7 else rng.choice(_WORDS["en"]) for _ in range(rng.randint(1, 8))))
    add("combining", 500, lambda: "".join(_combining(rng) if rng.random() < 0.6 else rng.choice(" abc") for _ in
                                          range(rng.randint(1, 8))))
    add("code", 1000, lambda: "".join(_code(rng) for _ in range(rng.randint(1, 2))))
    add("whitespace", 1000, lambda: "".join(
        rng.choice(_SPACES) * rng.randint(1, 12) if rng.random() < 0.5 else rng.choice(_WORDS["en"] + ["1", "x", ".",
                                                                                                       "中", "🎉"])
        for _ in range(rng.randint(1, 10))))
    add("numbers", 800, lambda: rng.choice(["", " ", "x", "v", "$", "-"]).join(
        _number(rng) for _ in range(rng.randint(1, 4))))
    add("case", 600, lambda: rng.choice([" ", "", "_", "-", "."]).join(_cased(rng) for _ in range(rng.randint(1, 5))))
    add("special_like", 800, lambda: "".join(
        rng.choice(_SPECIAL_LIKE) if rng.random() < 0.5 else rng.choice(_WORDS["en"] + [" ", "\n", "", "中文", "🎉"])
        for _ in range(rng.randint(1, 8))))
    add("unicode_random", 1300, lambda: "".join(
        _random_code_point(rng, NEWER_UNICODE) if rng.random() < 0.7 else rng.choice(["a", "A", " ", "1", "!", "é"])
        for _ in range(rng.randint(1, 16))))
    add("mixed", 700, lambda: "".join(
        rng.choice([_sentence(rng, rng.choice(list(_WORDS))), _emoji(rng), _number(rng), _cased(rng),
                    rng.choice(_SPACES), rng.choice(_SPECIAL_LIKE), _combining(rng)])
        for _ in range(rng.randint(2, 10))))

    # Long inputs (>= 100 KB): whole documents, single huge pieces.
    def long_doc(categories: set[str], size: int) -> str:
        pool = [t for c, t in out if c in categories and t]
        parts, total = [], 0
        while total < size:
            t = rng.choice(pool)
            parts.append(t)
            total += len(t.encode())
        return rng.choice(["\n", " ", "\n\n"]).join(parts)

    out.append(("long", long_doc({"prose_latin", "prose_other", "code", "numbers", "emoji"}, 100_000)))
    out.append(("long", long_doc({"code", "whitespace"}, 100_000)))
    out.append(("long", "".join(rng.choice("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年") for _ in
                                range(35_000))))  # one 105 KB CJK piece
    out.append(("long", " " * 100_000 + "x"))  # one 100 KB whitespace piece, then a letter
    out.append(("long", "a" * 100_000))  # one piece, every pair mergeable (ties everywhere)
    out.append(("long", "".join(rng.choice("0123456789") for _ in range(100_000))))
    return out
