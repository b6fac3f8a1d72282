"""Tokenizers, bucketing sampler and collate of datamodules/text.py, and the token ids the text DataModules expose."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from datamodules.sentiment import SentimentDataModule
from datamodules.text import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    BucketBatchSampler,
    EncodedTexts,
    encode,
    pad_collate,
    train_tokenizer,
)
from datamodules.translation import TranslationDataModule
from tokenizers import Tokenizer

TRAIN = ["A great film!<br />Great acting.", "A dull film, dull plot.", "Café scenes: great", "dull dull dull"]


def test_tokenizer_normalises_english_and_reserves_pad_and_unk() -> None:
    tokenizer = train_tokenizer(TRAIN, vocab_size=100, min_frequency=1, max_length=50)
    assert tokenizer.token_to_id("[PAD]") == PAD_ID == 0 and tokenizer.token_to_id("[UNK]") == UNK_ID == 1
    tokens = tokenizer.encode("GREAT<br/>Café, film!").tokens
    assert tokens == ["great", "cafe", ",", "film", "!"]  # line break dropped, lower-cased, accent stripped
    assert "br" not in tokenizer.get_vocab()


def test_vocabulary_comes_from_the_given_texts_with_size_and_frequency_caps() -> None:
    tokenizer = train_tokenizer(TRAIN, vocab_size=100, min_frequency=2, max_length=50)
    vocab = tokenizer.get_vocab()
    assert {"great", "dull", "film"} <= set(vocab) and "plot" not in vocab  # seen once
    assert encode(tokenizer, ["superb plot"]) == [[UNK_ID, UNK_ID]]  # "superb" never seen in training
    small = train_tokenizer(TRAIN, vocab_size=4, min_frequency=1, max_length=50)
    assert small.get_vocab_size() == 4 and {"dull", "great"} <= set(small.get_vocab())  # the two most frequent


def test_encoding_truncates_and_never_returns_an_empty_sequence() -> None:
    tokenizer = train_tokenizer(TRAIN, vocab_size=100, min_frequency=1, max_length=5)
    ids = encode(tokenizer, ["great " * 1000, "", "   \n\t", "film"])
    assert [len(x) for x in ids] == [5, 1, 1, 1]
    assert ids[1] == ids[2] == [UNK_ID]


def test_tokenizer_round_trips_through_its_json_string() -> None:
    tokenizer = train_tokenizer(TRAIN, vocab_size=100, min_frequency=1, max_length=3)
    restored = Tokenizer.from_str(tokenizer.to_str())
    texts = ["A great, dull film!", "nothing known here"]
    assert encode(restored, texts) == encode(tokenizer, texts)
    assert len(restored.encode("great " * 10).ids) == 3  # truncation is part of the JSON


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_subword_tokenizers_spell_unseen_words_in_pieces_and_round_trip(kind: str) -> None:
    texts = ["a great film", "greatest acting", "a dull film", "dull plot"] * 3
    tokenizer = train_tokenizer(texts, vocab_size=40, min_frequency=2, max_length=50, kind=kind)
    assert tokenizer.get_vocab_size() <= 40  # every id has a row in an embedding of vocab_size rows
    assert tokenizer.token_to_id("[PAD]") == PAD_ID and tokenizer.token_to_id("[UNK]") == UNK_ID
    word = train_tokenizer(texts, vocab_size=200, min_frequency=2, max_length=50)
    assert encode(word, ["dullest"]) == [[UNK_ID]]  # never seen: unknown to the word-level tokenizer
    pieces = tokenizer.encode("dullest").tokens
    assert len(pieces) > 1 and UNK_ID not in encode(tokenizer, ["dullest"])[0]  # spelt in known pieces
    assert tokenizer.decode(tokenizer.encode("a Great film").ids).replace(" ", "") == "agreatfilm"
    restored = Tokenizer.from_str(tokenizer.to_str())
    assert encode(restored, ["dullest great films"]) == encode(tokenizer, ["dullest great films"])


@pytest.mark.parametrize("kind", ["word", "wordpiece"])
def test_tweet_normalization_merges_links_mentions_and_elongations(kind: str) -> None:
    texts = ["@ann soooo good!!! http://t.co/x", "@bob so bad www.ugh.com/y", "soo good"] * 2
    tokenizer = train_tokenizer(texts, vocab_size=100, min_frequency=1, max_length=50, kind=kind, normalizer="tweets")
    tokens = tokenizer.encode("@Carl SOOOOOOO good!!!!! https://t.co/new?a=1").tokens
    assert tokens == ["xxuser", "soo", "good", "!!", "xxurl"]
    assert not {"ann", "bob", "http", "sooo"} & set(tokenizer.get_vocab())
    plain = train_tokenizer(texts, vocab_size=100, min_frequency=1, max_length=50, kind=kind)
    assert plain.encode("@ann").tokens == ["@", "ann"] and "xxuser" not in plain.get_vocab()
    restored = Tokenizer.from_str(tokenizer.to_str())  # the normalisation is part of the JSON
    assert restored.normalizer.normalize_str("@dan looool") == " xxuser  lool"


def test_collate_pads_each_batch_to_its_longest_text() -> None:
    (tokens, lengths), target = pad_collate([([5, 6, 7], 1), ([8], 0)])
    assert tokens.tolist() == [[5, 6, 7], [8, PAD_ID, PAD_ID]] and tokens.dtype == torch.long
    assert lengths.tolist() == [3, 1] and target.tolist() == [1, 0]
    ((tokens, lengths),) = pad_collate(EncodedTexts([[4], [4, 4]])[[0, 1]])  # no labels: predict
    assert tokens.shape == (2, 2) and lengths.tolist() == [1, 2]


def flatten(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


@pytest.mark.parametrize("shuffle", [True, False])
def test_buckets_cover_every_example_once_in_batches_of_similar_length(shuffle: bool) -> None:
    lengths = torch.randint(1, 500, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = BucketBatchSampler(lengths, batch_size=32, shuffle=shuffle, pool_batches=10)
    batches = list(sampler)
    assert len(batches) == len(sampler) == math.ceil(1000 / 32)
    assert sorted(flatten(batches)) == list(range(1000))
    padding = sum(max(lengths[i] for i in b) * len(b) for b in batches) - sum(lengths)
    random_order = [list(range(i, min(i + 32, 1000))) for i in range(0, 1000, 32)]
    random_padding = sum(max(lengths[i] for i in b) * len(b) for b in random_order) - sum(lengths)
    assert padding < random_padding / 5


def test_bucket_order_is_seeded_and_changes_with_the_epoch() -> None:
    lengths = list(range(1, 201))

    def order(seed: int, epoch: int) -> list[list[int]]:
        sampler = BucketBatchSampler(lengths, batch_size=8, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    evaluation = BucketBatchSampler(lengths[::-1], batch_size=8, shuffle=False)
    assert list(evaluation)[0] == list(range(199, 191, -1))  # shortest first, always the same


@pytest.mark.parametrize("n, shuffle", [(1000, True), (1001, True), (37, False), (3, True)])
def test_ranks_get_disjoint_shards_with_equal_batch_counts(n: int, shuffle: bool) -> None:
    lengths = [1 + i % 97 for i in range(n)]
    world = 3
    shards = []
    for rank in range(world):
        sampler = BucketBatchSampler(lengths, batch_size=16, shuffle=shuffle, seed=7, num_replicas=world, rank=rank)
        sampler.set_epoch(2)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler)
    assert len({len(s) for s in shards}) == 1  # DDP needs the same number of steps on every rank
    counts = Counter(flatten([b for s in shards for b in s]))
    assert set(counts) == set(range(n))  # nothing lost
    repeated = sum(counts.values()) - n  # padding batches, repeated to even out the ranks
    assert repeated <= (world - 1) * 16


def test_sampler_rejects_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match="rank 2"):
        BucketBatchSampler([1, 2], batch_size=1, num_replicas=2, rank=2)


@pytest.mark.parametrize("kind", ["bpe", "word"])
def test_exact_tokenizer_keeps_the_text_and_frames_it_with_the_template(kind: str) -> None:
    texts = ["Le 5 mars 2024", "Été à Paris", "le 12 mai"] * 3
    tokenizer = train_tokenizer(texts, vocab_size=60, min_frequency=0, max_length=8, kind=kind, normalizer="none",
                                special_tokens=4, template="[BOS] $A [EOS]")
    assert [tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]", "[BOS]", "[EOS]")] == [PAD_ID, UNK_ID, BOS_ID, EOS_ID]
    ids = tokenizer.encode("Été à Paris").ids
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    assert tokenizer.decode(ids) == "Été à Paris"  # case and accents kept
    if kind == "bpe":
        assert tokenizer.encode("2024").tokens[1:-1] == ["▁", "2", "0", "2", "4"]  # digits one by one
    assert len(tokenizer.encode("le " * 20).ids) == 8  # truncated, [EOS] included


def test_datamodules_token_ids_are_their_tokenizers(tmp_path) -> None:
    rows = ["text,label"] + [f"{'great' if i % 2 else 'dull'} film {i},{i % 2}" for i in range(40)]
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    sentiment = SentimentDataModule(dataset="csv", path=str(tmp_path / "r.csv"), min_frequency=1, vectors=None)
    sentiment.setup("fit")
    assert (sentiment.pad_id, sentiment.unk_id) == (0, 1)
    assert (sentiment.pad_id, sentiment.unk_id) == tuple(sentiment.tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]"))
    translation = TranslationDataModule(dataset="cldr", size=60)
    translation.setup("fit")
    assert (translation.pad_id, translation.bos_id, translation.eos_id) == (0, 2, 3)
    for tokenizer in translation.tokenizers():
        assert [tokenizer.token_to_id(t) for t in ("[PAD]", "[BOS]", "[EOS]")] == [0, 2, 3]
    batch = next(iter(translation.train_dataloader()))
    assert (batch["target"][:, 0] == translation.bos_id).all()
