"""Token counts with CLIP's own BPE tokenizer, exactly; no download, no torch.

SDXL's text encoders read a caption through CLIP's byte-level BPE (`open_clip.SimpleTokenizer`,
the same merges as 🤗 `CLIPTokenizer`) in windows of 75 tokens (77 with the start and end
tokens); sd-scripts' `max_token_length` 75/150/225 is one, two or three windows, and whatever
falls past the last is silently lost. `ClipTokenizer` here is that tokenizer:

- the vocabulary is `resources/clip_bpe_simple_vocab_16e6.txt.gz`, the file open-clip-torch ships
  (MIT; see resources/README.md), read once per tokenizer;
- cleaning as SimpleTokenizer's `lower` cleaner: html-unescape twice, strip, collapse whitespace,
  lower-case. SimpleTokenizer first runs `ftfy.fix_text`; here its parts that change real
  captions are done without ftfy: NFC, curly quotes to straight ones, full-width ASCII and the
  ideographic space to ASCII, latin ligatures. (ftfy's mojibake repair is not: a caption that is
  mojibake counts as written.) `tests/test_caption_tokens.py` compares with open_clip's own;
- the pre-token pattern, the BPE merges by rank, and a cache per pre-token (a dict: tag
  vocabularies repeat words, so nearly every word is a hit; `stats()` gives the hit rate).

`count(text)` gives the tokens between the start and end tokens (what the 75-token windows
hold). Counts of tag captions are made per tag, not per caption (captions/variants.py): a
pre-token never spans whitespace, so `a, b, c` counts as `a,` + `b,` + `c`.

`load_tokenizer("clip")` or a path to a `tokenizer.json` (the optional `tokenizers` library):
the same `count` for any other model's tokenizer.
"""

from __future__ import annotations

import gzip
import html
import importlib.resources
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

import regex

WINDOWS = (75, 150, 225)  # sd-scripts' max_token_length: one, two, three 75-token windows
VOCAB_FILE = "clip_bpe_simple_vocab_16e6.txt.gz"
_SPECIAL = ("<start_of_text>", "<end_of_text>")
# SimpleTokenizer's pattern (re.IGNORECASE there too), special tokens first.
_PATTERN = regex.compile(
    "|".join(_SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
)
_FTFY_LIKE = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
    "\u3000": " ", **{chr(c): chr(c - 0xFEE0) for c in range(0xFF01, 0xFF5F)},
    "\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl", "\ufb05": "st", "\ufb06": "st",
})


class Tokenizer(Protocol):
    name: str

    def count(self, text: str) -> int: ...


def clean(text: str) -> str:
    """SimpleTokenizer's `lower` cleaning (ftfy's caption-relevant fixes done by hand)."""
    text = unicodedata.normalize("NFC", text).translate(_FTFY_LIKE)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


@lru_cache(maxsize=1)
def _byte_encoder() -> tuple[str, ...]:
    """GPT-2's reversible byte → printable character table (as CLIP's `bytes_to_unicode`)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    table = dict(zip(bs, cs))
    return tuple(chr(table[b]) for b in range(256))


def read_merges() -> dict[tuple[str, str], int]:
    """Merge → rank, exactly the slice SimpleTokenizer uses (lines 1 … 48,894)."""
    data = importlib.resources.files("kohaku_data.resources").joinpath(VOCAB_FILE).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    return {tuple(line.split()): rank for rank, line in enumerate(lines)}  # type: ignore[misc]


@dataclass
class ClipTokenizer:
    """CLIP's BPE, counting only. One per process or job (its caches grow with the vocabulary
    seen: ~100 bytes a distinct word)."""

    name: str = "clip"
    ranks: dict[tuple[str, str], int] = field(default_factory=read_merges)
    words: dict[str, int] = field(default_factory=dict)  # pre-token → BPE tokens
    hits: int = 0
    misses: int = 0

    def count(self, text: str) -> int:
        """Tokens of `text` between CLIP's start and end tokens."""
        return self.count_clean(clean(text))

    def count_clean(self, text: str) -> int:
        words, total = self.words, 0
        for word in _PATTERN.findall(text):
            n = words.get(word)
            if n is None:
                n = words[word] = self._bpe_len(word)
                self.misses += 1
            else:
                self.hits += 1
            total += n
        return total

    def count_many(self, texts: Iterable[str]) -> list[int]:
        return [self.count(t) for t in texts]

    def tokens(self, text: str) -> list[str]:
        """The BPE symbols of `text` (ids are their rank in the vocabulary; kept out: counts only)."""
        return [s for word in _PATTERN.findall(clean(text)) for s in self._bpe(word)]

    def _bpe_len(self, word: str) -> int:
        return len(self._bpe(word))

    def _bpe(self, word: str) -> list[str]:
        if word in _SPECIAL:
            return [word]
        enc = _byte_encoder()
        symbols = [enc[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        ranks = self.ranks
        while len(symbols) > 1:
            best, at = None, -1
            for i in range(len(symbols) - 1):
                r = ranks.get((symbols[i], symbols[i + 1]))
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            first, second = symbols[at], symbols[at + 1]
            merged: list[str] = []
            i = 0
            while i < len(symbols):  # every occurrence of the pair, left to right (as CLIP does)
                if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def stats(self) -> dict[str, float]:
        looked = self.hits + self.misses
        return {"words_cached": len(self.words), "lookups": looked, "hit_rate": self.hits / looked if looked else 0.0}


@dataclass
class JsonTokenizer:
    """Any `tokenizer.json` (🤗 `tokenizers`, an optional dependency), counting without special tokens."""

    path: str
    name: str = ""

    def __post_init__(self) -> None:
        try:
            from tokenizers import Tokenizer as HfTokenizer
        except ImportError:
            from kohaku_data.errors import KdataError

            raise KdataError(f"tokenizer {self.path} needs the `tokenizers` library: pip install tokenizers") from None
        self._tok = HfTokenizer.from_file(self.path)
        self.name = self.name or self.path

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)


def load_tokenizer(name: str = "clip") -> Tokenizer:
    """`clip` (bundled, exact) or the path of a tokenizer.json."""
    return ClipTokenizer() if name == "clip" else JsonTokenizer(name)


def window_shares(counts: Iterable[int], windows: tuple[int, ...] = WINDOWS) -> dict[str, float]:
    """Share of captions past each window (tokens > window)."""
    values = list(counts)
    n = len(values)
    return {f"past_{w}": (sum(1 for c in values if c > w) / n if n else 0.0) for w in windows}
