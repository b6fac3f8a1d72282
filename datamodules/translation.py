"""Sentence pairs for translation: Tatoeba/Anki-style TSV files, or CLDR phrase pairs generated offline.

    python -m apps.translate fit --data.dataset=auto|tsv|cldr --data.path=fra.txt

``tsv`` reads ``source<TAB>target[<TAB>anything]`` lines, plain or inside a .zip (the Anki exports
of manythings.org, the PyTorch tutorial's ``eng-fra.txt``); without ``--data.path`` it looks in
``data_dir`` and downloads the tutorial's ``data.zip`` when the network allows. ``cldr`` generates
phrase pairs with Babel and num2words (``datamodules/cldr_pairs.py``). ``auto`` takes the TSV pairs
when present or downloadable, else the CLDR pairs, and says so.

Pairs are split by *source phrase*, so a sentence with several translations lies in one split only.
Source and target get their own ``tokenizers.Tokenizer`` (``datamodules/text.py``: BPE or word level,
text kept as it is, with ``[PAD]``, ``[UNK]``, ``[BOS]``, ``[EOS]``), trained on the training split only
and saved in the checkpoint (``state_dict``). Texts are encoded when a dataloader is built, not in
``setup``: under ``test --ckpt_path`` Lightning runs ``setup`` before it loads the checkpoint's tokenizers.
"""

from __future__ import annotations

import random
import unicodedata
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from datamodules.base import DataError, OfflineDataModule, check_positive, seeded_split
from datamodules.cldr_pairs import check_pair, generate_pairs
from datamodules.text import BOS_ID, EOS_ID, PAD_ID, UNK, bucketed_loader, encode, pad, train_tokenizer
# The PyTorch translation tutorial's pairs (English<TAB>French), the default TSV download.
TSV_URL = "https://download.pytorch.org/tutorial/data.zip"
TSV_MEMBER = "data/eng-fra.txt"
# Files `tsv` looks for in data_dir when no --data.path is given, in this order.
TSV_NAMES = ("eng-fra.txt", "fra.txt", "fra-eng.zip", "data.zip")


def normalize(text: str) -> str:
    """NFC, single spaces: the same sentence typed twice compares equal."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def decode_lines(data: bytes, where: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of every non-blank line; undecodable bytes are an error naming the line."""
    lines = []
    for number, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").splitlines(), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{where}:{number}: not UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1})") from None
        if text.strip():
            lines.append((number, text))
    return lines


def read_tsv_bytes(path: Path, member: str | None) -> tuple[bytes, str]:
    """The bytes of a TSV file, or of its member when ``path`` is a .zip; and the name errors use."""
    if not path.is_file():
        raise DataError(f"--data.path {path}: no such file")
    if not zipfile.is_zipfile(path):
        if path.suffix == ".zip":
            raise DataError(f"{path}: not a readable zip file")
        return path.read_bytes(), str(path)
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(".txt") and not Path(n).name.startswith("_")]
        if member is None:
            member = TSV_MEMBER if TSV_MEMBER in names else (names[0] if len(names) == 1 else None)
        if member is None or member not in archive.namelist():
            raise DataError(f"{path}: name the pairs file with --data.member, one of: {', '.join(names[:10]) or 'none'}")
        return archive.read(member), f"{path}:{member}"


def read_pairs(path: Path, member: str | None = None) -> list[tuple[str, str]]:
    """``(source, target)`` from ``source<TAB>target[<TAB>anything]`` lines; a malformed line is an error."""
    data, where = read_tsv_bytes(path, member)
    pairs = []
    for number, line in decode_lines(data, where):
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"{where}:{number}: no tab between source and target: {line[:60]!r}")
        source, target = normalize(fields[0]), normalize(fields[1])
        if not source or not target:
            raise DataError(f"{where}:{number}: empty {'source' if not source else 'target'} side")
        pairs.append((source, target))
    if not pairs:
        raise DataError(f"{where}: no sentence pairs")
    return pairs


class EncodedPairs(Dataset):
    """Token ids of each source (and target) with the texts, for the metrics and the reports.
    Indexed by a list of indices (a whole batch): the DataLoader runs with a batch sampler."""

    def __init__(self, sources: list[str], source_ids: list[list[int]], targets: list[str] | None = None,
                 target_ids: list[list[int]] | None = None) -> None:
        self.sources, self.source_ids, self.targets, self.target_ids = sources, source_ids, targets, target_ids

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def lengths(self) -> list[int]:
        """Tokens per pair, the longer side, which sets the batch's width."""
        return [max(len(s), len(t)) for s, t in zip(self.source_ids, self.target_ids or self.source_ids)]

    def __getitem__(self, batch: list[int]) -> list[tuple]:
        if self.targets is None:
            return [(self.sources[i], self.source_ids[i], None, None) for i in batch]
        return [(self.sources[i], self.source_ids[i], self.targets[i], self.target_ids[i]) for i in batch]


def collate_pairs(examples: list[tuple]) -> dict[str, Any]:
    """A batch padded to its own longest sentence.

    ``source`` (B, S), ``source_lengths`` (B,), ``source_text``; with targets also ``target``
    (B, T) as ``[BOS] ... [EOS] [PAD]...`` and ``target_text``.
    """
    texts, source_ids, targets, target_ids = zip(*examples)
    batch = {
        "source": pad(source_ids),
        "source_lengths": torch.tensor([len(ids) for ids in source_ids]),
        "source_text": list(texts),
    }
    if targets[0] is not None:
        batch["target"] = pad(target_ids)
        batch["target_text"] = list(targets)
    return batch


class TranslationDataModule(OfflineDataModule):
    """Sentence pairs with source and target tokenizers that travel in the checkpoint.

    Batches are dicts: ``source`` (B, S) and ``source_lengths`` (B,), with targets ``target`` (B, T)
    as ``[BOS] ... [EOS]``, all padded with ``pad_id``; and the texts (``collate_pairs``).

    Args:
        dataset: ``tsv`` (tab-separated pairs), ``cldr`` (generated phrase pairs) or ``auto`` (the TSV
            pairs when present or downloadable, else ``cldr``).
        data_dir: Folder searched for ``eng-fra.txt``, ``fra.txt``, ``fra-eng.zip`` or ``data.zip``; downloads go there.
        path: A TSV file or a .zip holding one (``tsv``); overrides the search in ``data_dir``.
        member: The pairs file inside a .zip with several (default: ``data/eng-fra.txt`` or the only .txt).
        reverse: Translate the TSV's second column into its first.
        lowercase: Lower-case both sides (and the predict inputs).
        max_words: ``tsv``: drop pairs with more words than this on either side (None keeps all).
        max_pairs: ``tsv``: keep at most this many pairs, a seeded random sample (None keeps all).
        source_lang: ``cldr``: language of the source phrases (a Babel locale num2words also knows).
        target_lang: ``cldr``: language of the target phrases.
        size: ``cldr``: number of phrase pairs generated.
        val_fraction: Share of the source phrases held out for validation.
        test_fraction: Share of the source phrases held out for testing.
        tokenizer: ``bpe`` (subwords, digits apart) or ``word`` (whitespace-separated words).
        source_vocab_size: Most tokens in the source vocabulary, special tokens included.
        target_vocab_size: Most tokens in the target vocabulary, special tokens included.
        max_tokens: Longest encoding, special tokens included; longer inputs are cut (predict warns).
        batch_size: Sentence pairs per batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        seed: Seed of the CLDR phrases, the split and the TSV sample.
        predict_path: ``predict``: a UTF-8 text file, one sentence a line (blank lines skipped).
        sentences: ``predict``: sentences given on the command line, e.g. ``--data.sentences='[March 5, 2024]'``.
    """

    download_name, download_url, fallback_name = "tsv", TSV_URL, "cldr"
    inline_inputs = "sentences"
    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID  # both tokenizers' fixed ids, linked into the model

    def __init__(
        self,
        dataset: Literal["auto", "tsv", "cldr"] = "auto",
        data_dir: str = "data",
        path: str | None = None,
        member: str | None = None,
        reverse: bool = False,
        lowercase: bool = False,
        max_words: int | None = 10,
        max_pairs: int | None = None,
        source_lang: str = "en",
        target_lang: str = "fr",
        size: int = 20000,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        tokenizer: Literal["bpe", "word"] = "bpe",
        source_vocab_size: int = 2000,
        target_vocab_size: int = 2000,
        max_tokens: int = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        predict_path: str | None = None,
        sentences: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_positive(self, "batch_size", "size", "max_tokens")
        self.source_tokenizer: Tokenizer | None = None
        self.target_tokenizer: Tokenizer | None = None

    # The model's embedding and output sizes: the caps, known before any tokenizer is trained.
    @property
    def source_vocab_size(self) -> int:
        return self.hparams.source_vocab_size

    @property
    def target_vocab_size(self) -> int:
        return self.hparams.target_vocab_size

    def tsv_path(self) -> Path | None:
        """The TSV file or zip to read: ``--data.path``, else the first known name found in ``data_dir``."""
        if self.hparams.path is not None:
            return Path(self.hparams.path)
        found = [Path(self.hparams.data_dir) / name for name in TSV_NAMES]
        return next((p for p in found if p.is_file()), None)

    def present(self) -> bool:
        return self.tsv_path() is not None

    def download(self) -> None:
        """The PyTorch tutorial's pairs, as ``data_dir/data.zip``."""
        target = Path(self.hparams.data_dir) / "data.zip"
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(TSV_URL) as response:
            data = response.read()
        target.with_suffix(".partial").write_bytes(data)
        target.with_suffix(".partial").replace(target)

    def missing(self) -> str:
        looked = ", ".join(TSV_NAMES)
        return f"no sentence pairs are in {self.hparams.data_dir} (looked for {looked}; or pass --data.path FILE)"

    def describe(self, name: str) -> str:
        if name == "tsv":
            return f"sentence pairs from {self.tsv_path()}"
        h = self.hparams
        return f"{h.size} {h.source_lang}->{h.target_lang} phrase pairs generated from CLDR data"

    def choose_source(self) -> tuple[str, str]:
        name, reason = super().choose_source()
        if name == "cldr":  # check before the notice, so a bad language is the only line
            check_pair(self.hparams.source_lang, self.hparams.target_lang)
        return name, reason

    def load(self, name: str) -> None:
        if name == "tsv":
            self.hparams.path = str(self.tsv_path())  # the checkpoint records the file used
        self.splits = self.split(self.load_pairs(name))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.source_tokenizer is None:
            h, (sources, targets) = self.hparams, zip(*self.splits["train"])
            # The text as it is (decode gives it back), all four special tokens; sources end in [EOS],
            # targets run from [BOS] to [EOS].
            options = dict(min_frequency=0, max_length=h.max_tokens, kind=h.tokenizer, normalizer="none", special_tokens=4)
            self.source_tokenizer = train_tokenizer(sources, h.source_vocab_size, **options, template="$A [EOS]")
            self.target_tokenizer = train_tokenizer(targets, h.target_vocab_size, **options, template="[BOS] $A [EOS]")

    def load_pairs(self, name: str) -> list[tuple[str, str]]:
        h = self.hparams
        if name == "cldr":
            pairs = generate_pairs(h.size, h.source_lang, h.target_lang, h.seed)
        else:
            pairs = read_pairs(Path(h.path), h.member)
            if h.reverse:
                pairs = [(t, s) for s, t in pairs]
            if h.max_words is not None:
                pairs = [(s, t) for s, t in pairs if max(len(s.split()), len(t.split())) <= h.max_words]
            if h.max_pairs is not None and len(pairs) > h.max_pairs:
                pairs = random.Random(h.seed).sample(pairs, h.max_pairs)
        if h.lowercase:
            pairs = [(s.lower(), t.lower()) for s, t in pairs]
        return pairs

    def split(self, pairs: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
        """Train, val and test pairs, disjoint by source phrase: all translations of a sentence go together."""
        sources = list(dict.fromkeys(s for s, _ in pairs))  # distinct, in first-seen order
        if len(sources) < 3:
            raise DataError(f"only {len(sources)} distinct source sentences: need at least 3 to split train/val/test")
        h = self.hparams
        test_idx, val_idx, _ = seeded_split(len(sources), [h.test_fraction, h.val_fraction], h.seed)
        split_of = dict.fromkeys(sources, "train")
        split_of.update({sources[i]: "test" for i in test_idx.tolist()})
        split_of.update({sources[i]: "val" for i in val_idx.tolist()})
        splits: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
        for source, target in pairs:
            splits[split_of[source]].append((source, target))
        empty = [name for name, rows in splits.items() if not rows]
        if empty:
            raise DataError(f"{len(sources)} source sentences leave the {' and '.join(empty)} split empty: add data or raise the fractions")
        return splits

    def load_predict(self) -> list[str]:
        h = self.hparams
        if h.predict_path is None and h.sentences is None:
            raise DataError("predict needs --data.predict_path FILE (one sentence a line) or --data.sentences '[...]'")
        texts = list(h.sentences or [])
        if h.predict_path is not None:
            path = Path(h.predict_path)
            if not path.is_file():
                raise DataError(f"--data.predict_path {path}: no such file")
            texts += [text for _, text in decode_lines(path.read_bytes(), str(path))]
        texts = [normalize(t) for t in texts if t.strip()]
        if not texts:
            raise DataError(f"--data.predict_path {h.predict_path}: no sentences to translate")
        return texts

    def state_dict(self) -> dict[str, Any]:
        if self.source_tokenizer is None:
            return {}
        return {"source_tokenizer": self.source_tokenizer.to_str(), "target_tokenizer": self.target_tokenizer.to_str()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.source_tokenizer = Tokenizer.from_str(state_dict["source_tokenizer"])
        self.target_tokenizer = Tokenizer.from_str(state_dict["target_tokenizer"])

    def tokenizers(self) -> tuple[Tokenizer, Tokenizer]:
        if self.source_tokenizer is None or self.target_tokenizer is None:
            raise DataError("no tokenizers: run `fit`, or pass a --ckpt_path written by `fit`")
        return self.source_tokenizer, self.target_tokenizer

    def dataset(self, split: str) -> EncodedPairs:
        """Encode a split in two batched calls, with the tokenizers fit trained or the checkpoint brought."""
        source_tok, target_tok = self.tokenizers()
        if split == "predict":
            inputs = [t.lower() for t in self.predict_inputs] if self.hparams.lowercase else self.predict_inputs
            encodings = source_tok.encode_batch(inputs)
            cut = sum(bool(e.overflowing) for e in encodings)
            if cut:
                rank_zero_warn(f"{cut} input(s) longer than {self.hparams.max_tokens} tokens were cut to that length")
            return EncodedPairs(self.predict_inputs, [e.ids for e in encodings])
        sources, targets = map(list, zip(*self.splits[split]))
        return EncodedPairs(sources, encode(source_tok, sources), targets, encode(target_tok, targets))

    def _loader(self, split: str) -> DataLoader:
        # Pairs of similar length batched together: a batch is as wide as its longest pair, and the
        # decoder runs one step per target token, so mixing a 5- and a 20-token pair wastes 15 steps.
        data, h = self.dataset(split), self.hparams
        return bucketed_loader(data, data.lengths, split, h.batch_size, h.seed, h.num_workers, self.trainer, collate_pairs)

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Target token ids -> texts, stopping at ``[EOS]``."""
        return self.tokenizers()[1].decode_batch([cut_at_eos(row) for row in ids])

    def tokens(self, ids: list[int], side: Literal["source", "target"]) -> list[str]:
        """Token strings of one sequence, for plots."""
        tokenizer = self.tokenizers()[0 if side == "source" else 1]
        return [tokenizer.id_to_token(i) or UNK for i in ids]


def cut_at_eos(ids: list[int]) -> list[int]:
    """The ids before the first ``[EOS]`` (all of them if there is none)."""
    return ids[: ids.index(EOS_ID)] if EOS_ID in ids else ids
