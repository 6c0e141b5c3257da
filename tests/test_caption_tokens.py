"""The bundled CLIP BPE tokenizer against open_clip's own SimpleTokenizer, and the columnar counter."""

from __future__ import annotations

import csv
import importlib.resources
import importlib.util
from pathlib import Path

import polars as pl
import pytest

from kohaku_data.captions.tokens import ClipTokenizer, clean
from kohaku_data.captions.variants import TokenCounter

TAGS = importlib.resources.files("kohaku_data.resources").joinpath("danbooru-tags-top20k.csv")


def _open_clip_tokenizer():
    """open_clip's tokenizer.py loaded on its own (the package imports torchvision, timm…)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open-clip-torch is not installed (pip install --no-deps open-clip-torch ftfy)")
    pytest.importorskip("ftfy")
    folder = Path(list(spec.submodule_search_locations)[0])
    loaded = importlib.util.spec_from_file_location("open_clip_tokenizer_only", folder / "tokenizer.py")
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module.SimpleTokenizer(), folder


def _texts() -> list[str]:
    names = [row[0] for row in csv.reader(TAGS.read_text().splitlines())][1:]
    captions = [", ".join(n.replace("_", " ") for n in names[i:i + 30]) for i in range(0, len(names), 30)]
    return names + captions + [
        "1girl, hatsune miku, |||long hair, “quoted” ＡＢＣ ﬁne &amp;amp; Café", "kei \\(keigarou\\), ^_^, >_<, :d, ;)",
        "A girl's hat isn't red; she'll say \"hello\"   twice.\n\tNew line", "<start_of_text>x", "", "   ",
        "日本語のテキスト、カタカナ", "emoji 🎉✨ and 123,456.78", "<general>solo, long hair</general> <meta></meta>",
    ]


def test_counts_equal_open_clip():
    reference, folder = _open_clip_tokenizer()
    assert (folder / "bpe_simple_vocab_16e6.txt.gz").read_bytes() == importlib.resources.files(
        "kohaku_data.resources").joinpath("clip_bpe_simple_vocab_16e6.txt.gz").read_bytes()
    tok = ClipTokenizer()
    texts = _texts()
    wrong = [t for t in texts if tok.count(t) != len(reference.encode(t))]
    assert wrong == []
    ids = {v: k for k, v in reference.encoder.items()}
    for t in texts[-12:]:
        assert tok.tokens(t) == [ids[i] for i in reference.encode(t)]


def test_known_counts_and_cleaning():
    tok = ClipTokenizer()
    assert tok.count("") == 0
    assert tok.count("a photo of a cat") == 5
    assert clean("  Ａ  “B”\u3000ﬁ &amp;amp; ") == 'a "b" fi &'
    assert tok.count("1girl, solo") == tok.count("1girl,") + tok.count("solo")  # pieces add up over spaces


def test_counter_column_is_exact_and_caches():
    tok = ClipTokenizer()
    counter = TokenCounter(tok)
    texts = pl.Series([", ".join(n.replace("_", " ") for n in row) for row in
                       [["1girl", "solo", "long_hair"], ["1girl", "kei_(keigarou)"], []]] + [None])
    assert counter.column(texts).tolist() == [tok.count(t or "") for t in texts.to_list()]
    counter.column(texts)
    stats = counter.stats()
    assert stats["piece_hit_rate"] >= 0.5 and stats["bpe_hit_rate"] > 0
