"""Text helpers shared by the sentiment and translation DataModules: ``tokenizers.Tokenizer``s (word
level or subword, with fixed special-token ids) trained on the training split, batched encoding, a
length-bucketing batch sampler that shards itself across DDP ranks, and padding to each batch's own
longest sequence.

Padding is per batch, so a batch of tweets is only as wide as its longest tweet even when a review in
the data is 500 tokens. Bucketing puts texts of similar length in the same batch, so little of each
batch is padding (BENCHMARKS.md, row "Sequences"); the LSTM (``models/lstm.py``) reads each text only
up to its own length, so the padding that is left costs a few steps but never changes a result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from torch.utils.data import DataLoader, Dataset, Sampler

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
# Fixed ids in every vocabulary: collates pad with 0 (the embeddings' padding_idx), a decoder starts
# from [BOS] and stops at [EOS]. They reach the models as DataModule attributes (pad_id, ...).
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS]

TokenizerKind = Literal["word", "wordpiece", "bpe"]
# english: lower-cased, accents dropped, split between words and punctuation (the sentiment app);
# tweets: english plus tweet_normalizers; none: the text as it is, so decode gives it back (translation).
NormalizerKind = Literal["english", "tweets", "none"]
# Stand-ins for what carries no sentiment yet would take one vocabulary row per instance: one \w+
# word each, so the pre-tokeniser keeps them whole.
URL_TOKEN, USER_TOKEN = "xxurl", "xxuser"
LINE_BREAK = r"<br\s*/?>"  # IMDB's HTML line breaks, which the normaliser turns into spaces


def tweet_normalizers() -> list[normalizers.Normalizer]:
    """Tweet clean-up, after lower-casing: links become ``xxurl``, @mentions ``xxuser``, and a letter or
    ``!``, ``?``, ``.`` repeated 3 or more times is cut to 2 (``soooo`` -> ``soo``, ``!!!!`` -> ``!!``),
    so elongated spellings share a row with each other. The tokenizers library's ``Replace`` writes a fixed string
    (no back-references), hence one rule per repeated character."""
    squeeze = [
        normalizers.Replace(Regex(f"{char}{{3,}}" if char.isalnum() else f"\\{char}{{3,}}"), char * 2)
        for char in "abcdefghijklmnopqrstuvwxyz!?."
    ]
    return [
        normalizers.Replace(Regex(r"(?:https?://|www\.)\S+"), f" {URL_TOKEN} "),
        normalizers.Replace(Regex(r"@\w+"), f" {USER_TOKEN} "),
        *squeeze,
    ]


def new_tokenizer(
    kind: TokenizerKind = "word", normalizer: NormalizerKind = "english", template: str | None = None
) -> Tokenizer:
    """An untrained tokenizer.

    ``english`` (and ``tweets``) normaliser: IMDB's ``<br />`` line breaks become spaces, Unicode is
    NFKD-decomposed and accents dropped (``café`` -> ``cafe``), everything lower-cased; ``tweets`` adds
    ``tweet_normalizers``. The pre-tokeniser splits on whitespace and between words and punctuation
    (``don't!`` -> ``don ' t !``), so ``good`` and ``good!`` share a row. ``none``: no normaliser, and
    ``decode`` gives the text back exactly: ``bpe`` turns spaces into ``▁`` (Metaspace) and makes digits
    single tokens, so numbers are copied digit by digit and never meet a merge they did not see;
    ``word`` splits on whitespace.

    Model: ``word`` gives each vocabulary word one id and every other word ``[UNK]``; ``wordpiece`` and
    ``bpe`` keep frequent words whole and spell the others in pieces learnt from the training text
    (``wordpiece``: ``##`` marks a word's continuation; ``bpe`` after ``english``: ``</w>`` marks a
    word's end), so a misspelt or unseen word keeps most of its letters.

    ``template``: the special tokens added around every encoding, e.g. ``[BOS] $A [EOS]``.
    """
    exact = normalizer == "none"
    if kind == "word":
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    elif kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
        tokenizer.decoder = decoders.WordPiece()
    elif kind == "bpe" and exact:
        tokenizer = Tokenizer(models.BPE(unk_token=UNK))
        tokenizer.decoder = decoders.Metaspace()
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=UNK, end_of_word_suffix="</w>"))
        tokenizer.decoder = decoders.BPEDecoder(suffix="</w>")
    else:
        raise ValueError(f"unknown tokenizer {kind!r}: expected word, wordpiece or bpe")
    if exact and kind == "bpe":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=True)]
        )
    elif exact:
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    else:
        tokenizer.normalizer = normalizers.Sequence(
            [
                normalizers.Replace(Regex(LINE_BREAK), " "),
                normalizers.NFKD(),
                normalizers.StripAccents(),
                normalizers.Lowercase(),
                *(tweet_normalizers() if normalizer == "tweets" else []),
            ]
        )
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+ | [^\w\s]+
    if template is not None:
        added = [(BOS, BOS_ID), (EOS, EOS_ID)]  # the tokens a template may add
        tokenizer.post_processor = processors.TemplateProcessing(single=template, special_tokens=added)
    return tokenizer


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int,
    max_length: int,
    kind: TokenizerKind = "word",
    normalizer: NormalizerKind = "english",
    special_tokens: int = 2,
    template: str | None = None,
) -> Tokenizer:
    """A tokenizer (``new_tokenizer(kind, normalizer, template)``) whose vocabulary holds at most
    ``vocab_size`` tokens, the first ``special_tokens`` of ``[PAD] [UNK] [BOS] [EOS]`` first (ids 0-3).
    ``word``: the most frequent words seen at least ``min_frequency`` times; ``wordpiece``/``bpe``: the
    characters of the text plus the most frequent merges of pairs seen at least ``min_frequency``
    times. Encodings are truncated to ``max_length`` tokens, special tokens included. Pass the
    training split only, so no token is learnt from val or test text.
    """
    tokenizer = new_tokenizer(kind, normalizer, template)
    specials = SPECIAL_TOKENS[:special_tokens]
    options = dict(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials, show_progress=False)
    if kind == "word":
        trainer = trainers.WordLevelTrainer(**options)
    else:
        # The subword trainers keep every character of the text (after english normalisation each one
        # twice: word-initial and continuing, or word-final), whatever vocab_size says: keep only the
        # most frequent characters that fit (rarer ones become [UNK]), so the embedding's vocab_size
        # rows hold every id.
        options["limit_alphabet"] = (vocab_size - len(specials)) // 2
        if kind == "wordpiece":
            trainer = trainers.WordPieceTrainer(**options)
        elif normalizer == "none":
            trainer = trainers.BpeTrainer(**options)
        else:
            trainer = trainers.BpeTrainer(**options, end_of_word_suffix="</w>")
    tokenizer.train_from_iterator(texts, trainer)
    assert [tokenizer.token_to_id(t) for t in specials] == list(range(len(specials)))
    if tokenizer.get_vocab_size() > vocab_size:
        raise ValueError(f"the {kind} tokenizer has {tokenizer.get_vocab_size()} tokens, more than vocab_size {vocab_size}")
    tokenizer.enable_truncation(max_length)  # stored in the tokenizer's JSON, so it travels with it
    return tokenizer


def encode(tokenizer: Tokenizer, texts: Sequence[str], unk_id: int = UNK_ID) -> list[list[int]]:
    """Token ids of every text, encoded in one batched (multi-threaded) call that skips the
    character offsets nobody here reads (``encode_batch_fast``; BENCHMARKS.md, row "Tokenization").

    A text with no tokens (empty or whitespace only) becomes ``[UNK]`` (``unk_id``): every sequence then has
    length >= 1 (an LSTM needs a step to pool over, and ``pack_padded_sequence`` requires it), and the
    model predicts from "unknown text".
    """
    return [encoding.ids or [unk_id] for encoding in tokenizer.encode_batch_fast(list(texts))]


class EncodedTexts(Dataset):
    """Token id lists with optional integer labels. Indexed by a list of indices (a whole batch),
    since ``BucketBatchSampler`` yields batches and the DataLoader runs with ``batch_size=None``."""

    def __init__(self, ids: list[list[int]], labels: Sequence[int] | None = None) -> None:
        if labels is not None and len(labels) != len(ids):
            raise ValueError(f"{len(ids)} texts but {len(labels)} labels")
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.ids]

    def __getitem__(self, batch: list[int]) -> list[tuple[list[int], int | None]]:
        return [(self.ids[i], None if self.labels is None else self.labels[i]) for i in batch]


def pad(sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    """``(B, T)`` int64, each row padded with ``PAD_ID`` to the longest sequence of the batch."""
    out = torch.full((len(sequences), max(map(len, sequences))), PAD_ID, dtype=torch.long)
    for row, ids in enumerate(sequences):
        out[row, : len(ids)] = torch.tensor(ids)
    return out


def pad_collate(examples: list[tuple[list[int], int | None]]) -> tuple:
    """Pad a batch to its own longest text.

    Returns ``((tokens, lengths), target)``: tokens ``(B, T)`` int64 padded with ``PAD_ID``, lengths
    ``(B,)`` int64 (on the CPU; ``pack_padded_sequence`` wants them there), target ``(B,)`` int64;
    ``((tokens, lengths),)`` when the examples have no labels (predict).
    """
    ids = [ids for ids, _ in examples]
    tokens, lengths = pad(ids), torch.tensor([len(x) for x in ids])
    if examples[0][1] is None:
        return ((tokens, lengths),)
    return (tokens, lengths), torch.tensor([label for _, label in examples])


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices whose texts have similar lengths, sharded over DDP ranks.

    ``shuffle=True`` (training): each epoch, a permutation seeded by ``seed + epoch`` is cut into pools
    of ``pool_batches`` batches; each pool is sorted by length and cut into batches, and the order of
    all batches is shuffled. Batches are thus nearly uniform in length yet differ from epoch to epoch.
    ``shuffle=False`` (val/test): all indices sorted by length (stable), then batched.

    Sharding: with ``num_replicas`` ranks, rank ``r`` takes batches ``r, r + R, r + 2R, ...`` of the
    same global list (every rank computes it from the same seed). For training the list is first
    extended by repeating its first batches so every rank gets the same number of batches, as DDP
    requires (a rank with one batch fewer would wait forever in the gradient all-reduce). Evaluation
    repeats nothing: every val/test example is in one batch of one rank, the very batches one process
    makes, so metrics synced at the epoch's end equal one process's.

    Lightning calls ``set_epoch`` on a DataLoader's ``sampler``, so use it as ``sampler=`` with
    ``batch_size=None``, and run the Trainer with ``use_distributed_sampler=False`` so that Lightning
    does not shard a second time.

    Args:
        lengths: Length of every example.
        batch_size: Examples per batch (the last batch of a pool may be smaller).
        shuffle: Shuffled buckets (training) or one length-sorted pass (evaluation).
        seed: Seed of the shuffling; the same on every rank.
        num_replicas: Number of DDP ranks.
        rank: This process's rank.
        pool_batches: Batches per sorted pool: larger pools pad less but shuffle less.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        pool_batches: int = 50,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.lengths = torch.as_tensor(lengths)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.num_replicas, self.rank, self.pool_batches = num_replicas, rank, pool_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[list[int]]:
        """Every rank's batches, in order; identical on all ranks."""
        if not self.shuffle:
            order = torch.sort(self.lengths, stable=True).indices
            return [chunk.tolist() for chunk in order.split(self.batch_size)]
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator)
        batches = []
        for pool in order.split(self.batch_size * self.pool_batches):
            pool = pool[torch.sort(self.lengths[pool], stable=True).indices]
            batches.extend(pool.split(self.batch_size))
        shuffled = torch.randperm(len(batches), generator=generator)
        return [batches[i].tolist() for i in shuffled]

    def __len__(self) -> int:
        n_batches = 0
        if len(self.lengths):
            if self.shuffle:
                pool = self.batch_size * self.pool_batches
                full, rest = divmod(len(self.lengths), pool)
                n_batches = full * self.pool_batches + math.ceil(rest / self.batch_size)
            else:
                n_batches = math.ceil(len(self.lengths) / self.batch_size)
        if not self.shuffle:  # this rank's share, unpadded
            return len(range(self.rank, n_batches, self.num_replicas))
        return math.ceil(n_batches / self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._global_batches()
        if not batches or not self.shuffle:
            return iter(batches[self.rank :: self.num_replicas])
        total = len(self) * self.num_replicas
        batches += (batches * math.ceil(total / len(batches)))[: total - len(batches)]
        return iter(batches[self.rank : total : self.num_replicas])


def bucketed_loader(data: Dataset, lengths: Sequence[int], split: str, batch_size: int, seed: int,
                    num_workers: int, trainer, collate_fn: Callable) -> DataLoader:
    """A DataLoader of length buckets (``BucketBatchSampler``, sharded over the trainer's DDP ranks),
    or, for ``predict``, of consecutive batches in input order, so each prediction meets its input.

    ``data`` is indexed by a whole batch of indices (``batch_size=None``: the sampler yields batches).
    """
    if split == "predict":
        sampler: Any = [list(range(i, min(i + batch_size, len(data)))) for i in range(0, len(data), batch_size)]
    else:
        sampler = BucketBatchSampler(
            lengths,
            batch_size,
            shuffle=split == "train",
            seed=seed,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
        )
    return DataLoader(
        data,
        sampler=sampler,
        batch_size=None,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
