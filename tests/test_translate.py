"""Translation app: TSV and zip reading, the CLDR generator, tokenizers, the seq2seq net's masking and
decoding, predict from a checkpoint, and one-line errors for bad input. No network."""

from __future__ import annotations

import contextlib
import csv
import io
import zipfile
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import apps.translate.__main__ as translate_app
from datamodules.cldr_pairs import generate_pairs
from datamodules.base import DataError
from datamodules.text import BOS_ID, EOS_ID, PAD_ID
from datamodules.translation import TranslationDataModule, read_pairs
from models.seq2seq import Decoder, Seq2Seq, hidden
from models.translator import Translator

TSV = (
    "Go.\tVa !\tCC-BY 2.0 (France) Attribution: tatoeba.org #2877272\n"
    "Hi.\tSalut !\n"
    "Hi.\tSalut.\n"
    "Run!\tCours !\n"
    "I see.\tJe comprends.\n"
    "Thank you very much for all of your help today.\tMerci beaucoup pour toute ton aide aujourd'hui.\n"
    "\n"
    "Who won?\tQui a gagné ?\n"
    "Wait!\tAttends !\n"
    "Hello!\tBonjour !\n"
    "Help!\tÀ l'aide !\n"
)
# A tiny model, so that fitting it in a test takes seconds.
TINY = ["--model.embedding_dim=16", "--model.hidden_size=32", "--model.beam_size=2", "--model.max_length=20"]


def write_tsv(folder: Path, text: str = TSV, name: str = "fra.txt") -> Path:
    path = folder / name
    path.write_bytes(text.encode("utf-8"))
    return path


def write_zip(folder: Path, text: str = TSV) -> Path:
    path = folder / "fra-eng.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("_about.txt", "Tab-delimited bilingual sentence pairs from tatoeba.org\n")
        archive.writestr("fra.txt", text)
    return path


def run(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        translate_app.main(list(args))
    return out.getvalue()


def one_line_error(args: list[str], capsys) -> str:
    """Run the app, expect exit code 2 and one ``error: ...`` line on stderr (after the ``[data]`` notice); return it."""
    with pytest.raises(SystemExit) as exit_:
        translate_app.main(args)
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("[data] ")]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# --- data -------------------------------------------------------------------------------------


@pytest.mark.parametrize("packed", ["plain", "zip"])
def test_tsv_pairs_plain_and_zipped(packed: str, tmp_path: Path) -> None:
    path = write_tsv(tmp_path) if packed == "plain" else write_zip(tmp_path)
    pairs = read_pairs(path)
    assert pairs[0] == ("Go.", "Va !")  # the attribution column is dropped
    assert len(pairs) == 10 and ("Hi.", "Salut.") in pairs  # the blank line is skipped

    data = TranslationDataModule(dataset="tsv", path=str(path), max_words=5, reverse=True, lowercase=True,
                                 val_fraction=0.2, test_fraction=0.2)
    data.setup("fit")
    rows = [pair for split in data.splits.values() for pair in split]
    assert ("va !", "go.") in rows  # reversed and lower-cased
    assert not any("merci" in source for source, _ in rows)  # longer than max_words
    sources = {name: {s for s, _ in split} for name, split in data.splits.items()}
    assert not (sources["train"] & sources["val"] or sources["train"] & sources["test"] or sources["val"] & sources["test"])
    assert sum(len(split) for split in data.splits.values()) == 9  # both "Salut" pairs kept, in one split


def test_auto_finds_the_tsv_in_data_dir_and_else_generates(tmp_path: Path, capsys) -> None:
    write_zip(tmp_path)
    found = TranslationDataModule(data_dir=str(tmp_path))
    found.prepare_data()
    found.setup("fit")
    assert found.hparams.dataset == "tsv" and found.hparams.path == str(tmp_path / "fra-eng.zip")

    fallback = TranslationDataModule(data_dir=str(tmp_path / "empty"), size=60)
    fallback.prepare_data()  # the network is closed in tests: no download
    fallback.setup("fit")
    assert fallback.hparams.dataset == "cldr"
    assert "[data] using cldr" in capsys.readouterr().err


def test_cldr_generator_is_deterministic_and_sized() -> None:
    pairs = generate_pairs(300, "en", "fr", seed=1)
    assert pairs == generate_pairs(300, "en", "fr", seed=1)
    assert pairs != generate_pairs(300, "en", "fr", seed=2)
    assert len(pairs) == 300 and len({s for s, _ in pairs}) == 300
    german = dict(generate_pairs(300, "en", "de", seed=1))
    assert german != dict(pairs) and any("und" in t for t in german.values())


def test_cldr_splits_are_disjoint_by_source(tmp_path: Path) -> None:
    data = TranslationDataModule(dataset="cldr", size=400, seed=3)
    data.setup("fit")
    sizes = {name: len(split) for name, split in data.splits.items()}
    assert sizes == {"train": 320, "val": 40, "test": 40}
    sources = {name: {s for s, _ in split} for name, split in data.splits.items()}
    assert not (sources["train"] & sources["val"] or sources["train"] & sources["test"] or sources["val"] & sources["test"])


@pytest.mark.parametrize("kind", ["bpe", "word"])
def test_tokenizers_round_trip_and_travel_in_the_state_dict(kind: str) -> None:
    data = TranslationDataModule(dataset="cldr", size=300, tokenizer=kind, batch_size=8)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    target = batch["target"]  # (B, T): [BOS] ... [EOS] [PAD]...
    assert (target[:, 0] == BOS_ID).all() and ((target == EOS_ID).sum(1) == 1).all()
    assert batch["source_lengths"].max() == batch["source"].shape[1]
    assert data.decode(target[:, 1:].tolist()) == batch["target_text"]

    restored = TranslationDataModule(dataset="cldr", size=300, tokenizer=kind)
    restored.load_state_dict(data.state_dict())
    assert restored.target_tokenizer.to_str() == data.target_tokenizer.to_str()


# --- net --------------------------------------------------------------------------------------


def random_batch(b: int = 5, s: int = 9, v: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([s, 3, 6, 1, 8][:b])
    source = torch.randint(4, v, (b, s), generator=generator)
    source[torch.arange(s) >= lengths.unsqueeze(1)] = PAD_ID
    return source, lengths


@pytest.mark.parametrize("rnn, attention", [("gru", "additive"), ("lstm", "multiplicative"), ("gru", "none")])
def test_net_shapes_and_padding_is_ignored(rnn: str, attention: str) -> None:
    torch.manual_seed(0)
    net = Seq2Seq(40, 30, embedding_dim=8, hidden_size=16, rnn=rnn, attention=attention).eval()
    source, lengths = random_batch()
    target_in = torch.randint(4, 30, (5, 7))
    logits = net(source, lengths, target_in)
    assert logits.shape == (5, 7, 30)

    scrambled = source.clone()
    padding = torch.arange(source.shape[1]) >= lengths.unsqueeze(1)
    scrambled[padding] = torch.randint(4, 40, (int(padding.sum()),))
    torch.testing.assert_close(net(scrambled, lengths, target_in), logits, rtol=0, atol=1e-6)
    tokens, scores, weights = net.greedy(source, lengths, max_length=6)
    tokens2, scores2, weights2 = net.greedy(scrambled, lengths, max_length=6)
    assert torch.equal(tokens, tokens2)
    torch.testing.assert_close(scores, scores2)
    assert weights.shape == (5, tokens.shape[1], source.shape[1])
    assert (weights[padding.unsqueeze(1).expand_as(weights)] == 0).all()  # no attention on padding
    if attention != "none":
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))


def plain_memory(net: Seq2Seq, source: torch.Tensor, lengths: torch.Tensor, k: int) -> dict[str, torch.Tensor | None]:
    """What the plain decoder reads, copied for each of ``k`` hypotheses per sentence: annotations, their
    attention keys (projected once per sentence, as Bahdanau's ``U k``), mask and final states."""
    keys, final, _ = net.encoder(source, lengths)
    attention = net.decoder.attention
    return {
        "keys": keys.repeat_interleave(k, 0),
        "projected": None if attention is None else attention.project(keys).repeat_interleave(k, 0),
        "mask": (torch.arange(source.shape[1]) < lengths.unsqueeze(1)).repeat_interleave(k, 0),
        "final": final.repeat_interleave(k, 0),
    }


def plain_step(decoder: Decoder, token: torch.Tensor, state, memory: dict[str, torch.Tensor | None]):
    """A decoder step as the architecture reads, on the context itself: ``cell([y; c], s)`` and
    ``out(tanh(pre_output([s'; c; y])))``. Logits, state and attention weights (None without attention)."""
    h = hidden(state)
    embedded = decoder.embedding(token)
    if decoder.attention is None:
        context, weights = memory["final"], None
    else:
        scores = decoder.attention.scores(h.unsqueeze(1), memory["projected"]).squeeze(1)  # one query per row
        weights = scores.masked_fill(~memory["mask"], float("-inf")).softmax(-1)
        context = torch.bmm(weights.unsqueeze(1), memory["keys"]).squeeze(1)
    state = decoder.cell(torch.cat([embedded, context], -1), state)
    h = hidden(state)
    return decoder.out(torch.tanh(decoder.pre_output(torch.cat([h, context, embedded], -1)))), state, weights


@pytest.mark.parametrize("rnn, attention", [("gru", "additive"), ("lstm", "multiplicative"), ("gru", "none"), ("lstm", "none")])
def test_decoder_step_is_the_plain_layers_on_the_context(rnn: str, attention: str) -> None:
    """The decoder reads the context through annotations projected once per sentence and writes the
    cell's gates out, for k hypotheses sharing their sentence's memory; each row's step must still be
    the plain layers' step on its own context."""
    torch.manual_seed(0)
    net = Seq2Seq(40, 30, embedding_dim=8, hidden_size=16, rnn=rnn, attention=attention).eval()
    source, lengths = random_batch()
    k = 3
    token = torch.randint(4, 30, (len(source) * k,))
    h = torch.randn(len(token), 16)  # a different state per hypothesis: each attends differently
    state = (h, torch.randn_like(h)) if rnn == "lstm" else h
    with torch.no_grad():
        memory, _ = net.encode(source, lengths)
        logits, new_state, weights = net.decoder(token, state, memory)
        plain_logits, plain_state, plain_weights = plain_step(net.decoder, token, state, plain_memory(net, source, lengths, k))
    torch.testing.assert_close(new_state, plain_state)
    torch.testing.assert_close(logits, plain_logits)
    if attention == "none":
        assert weights is None
    else:
        torch.testing.assert_close(weights, plain_weights)


def test_projected_context_saves_two_fifths_of_a_step() -> None:
    """At the net's default sizes, which the app uses (GRU, additive attention, embedding 128, hidden
    256, 2,000-token vocabularies), and 10 source tokens, a decoder step does about 40% fewer FLOPs
    than the plain layers' step, as torch counts them."""
    torch.manual_seed(0)
    net = Seq2Seq(2000, 2000).eval()
    source, lengths = torch.randint(4, 2000, (8, 10)), torch.full((8,), 10)
    token = torch.randint(4, 2000, (8,))
    with torch.no_grad():
        memory, state = net.encode(source, lengths)
        plain = plain_memory(net, source, lengths, k=1)
        with FlopCounterMode(display=False) as projected_count:
            net.decoder(token, state, memory)
        with FlopCounterMode(display=False) as plain_count:
            plain_step(net.decoder, token, state, plain)
    saved = 1 - projected_count.get_total_flops() / plain_count.get_total_flops()
    assert 0.35 < saved < 0.45, saved


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_beam_of_one_is_greedy(rnn: str) -> None:
    torch.manual_seed(1)
    net = Seq2Seq(40, 12, embedding_dim=8, hidden_size=16, rnn=rnn).eval()
    with torch.no_grad():  # larger weights make outputs depend on the input: sentences end at different steps
        for parameter in net.parameters():
            parameter.mul_(3)
    source, lengths = random_batch(seed=1)
    tokens, scores, _ = net.greedy(source, lengths, max_length=10)
    ended = (tokens == EOS_ID).any(1)
    assert ended.any() and not ended.all()
    beam_tokens, beam_scores = net.beam_search(source, lengths, beam_size=1, max_length=10, length_penalty=0.6)
    assert torch.equal(beam_tokens, tokens)
    # Close, not bit-equal: beam search drops settled sentences, and a product of fewer rows may round differently.
    assert torch.allclose(beam_scores, scores)

    wide, wide_scores = net.beam_search(source, lengths, beam_size=4, max_length=10, length_penalty=0.0)
    assert wide.shape[0] == 5 and wide_scores.shape == (5,) and (wide_scores <= 0).all()



@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_batched_beam_search_is_sentence_by_sentence(rnn: str) -> None:
    """Settled sentences leave the batch while the others search on: the translations and their
    scores are exactly those of searching each sentence alone, unpadded."""
    torch.manual_seed(3)
    net = Seq2Seq(40, 12, embedding_dim=8, hidden_size=16, rnn=rnn).eval()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.mul_(3)
    generator = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 9, (17,), generator=generator)
    source = torch.randint(4, 40, (17, 8), generator=generator)
    source[torch.arange(8) >= lengths.unsqueeze(1)] = PAD_ID
    tokens, scores = net.beam_search(source, lengths, beam_size=3, max_length=10)
    ends = {int((row == EOS_ID).nonzero()[0]) if (row == EOS_ID).any() else None for row in tokens}
    assert len(ends) >= 2  # sentences settle at different steps
    for row, (ids, length) in enumerate(zip(source, lengths)):
        alone, alone_score = net.beam_search(ids[None, :length], length[None], beam_size=3, max_length=10)
        assert torch.equal(tokens[row, : alone.shape[1]], alone[0])
        assert (tokens[row, alone.shape[1] :] == PAD_ID).all()
        assert torch.allclose(scores[row], alone_score[0])


def test_translator_uses_the_token_ids_it_is_given() -> None:
    """The ids the DataModule links reach decoding and the loss: here [BOS] is 1, [EOS] 5 and padding 7."""
    torch.manual_seed(0)
    model = Translator(20, 12, embedding_dim=8, hidden_size=16, pad_id=7, bos_id=1, eos_id=5).eval()
    assert (model.net.bos_id, model.net.eos_id, model.net.pad_id) == (1, 5, 7)
    with torch.no_grad():
        model.net.decoder.out.bias[5] = 1e4  # [EOS] first: every translation ends at once
        tokens, _, _ = model.net.greedy(torch.randint(8, 20, (3, 4)), torch.full((3,), 4), max_length=6)
    assert tokens.tolist() == [[5]] * 3
    logits, target = torch.randn(3, 4, 12), torch.tensor([[2, 3, 7, 7]] * 3)
    assert torch.isclose(model.loss(logits, target), model.loss(logits[:, :2], target[:, :2]))  # padding ignored

# --- app ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny model fitted for a few steps on 300 CLDR phrase pairs, without loggers."""
    workdir = tmp_path_factory.mktemp("translate")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        run("fit", "--data.dataset=cldr", "--data.size=300", *TINY, "--trainer.max_epochs=1",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false")
    return next(workdir.glob("runs/translate/checkpoints/last.ckpt"))


def test_predict_from_the_checkpoint_alone(checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert "source_tokenizer" in state["TranslationDataModule"]
    lines = ["March 5, 2024", "", "Héllo wörld ¿😀?", " ".join(["twenty-one"] * 200)]  # unknown chars, over-long
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "out.csv"
    with pytest.warns(UserWarning, match="longer than 64 tokens"):
        run("predict", f"--ckpt_path={checkpoint}", f"--data.predict_path={tmp_path / 'in.txt'}",
            "--data.sentences=[three hundred]", f"--output={output}")
    with open(output, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [row["input"] for row in rows] == ["three hundred", lines[0], lines[2], lines[3]]  # in order, blank skipped
    assert all(0 <= float(row["probability"]) <= 1 and "translation" in row for row in rows)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"Go.\tVa !\nHi. Salut !\n", ":2: no tab between source and target"),
        (b"Go.\tVa !\nHi.\t  \n", ":2: empty target side"),
        (b"Go.\tVa !\nRun!\tCours !\n\tAttends !\n", ":3: empty source side"),
        (b"Go.\tVa !\nHi.\tSalut \xe9 !\n", ":2: not UTF-8 text"),
    ],
)
@pytest.mark.parametrize("packed", ["plain", "zip"])
def test_bad_tsv_lines_end_in_one_line_naming_file_and_line(content: bytes, message: str, packed: str,
                                                            tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "fra.txt"
    path.write_bytes(content)
    where = str(path)
    if packed == "zip":
        with zipfile.ZipFile(tmp_path / "pairs.zip", "w") as archive:
            archive.writestr("fra.txt", content)
        path, where = tmp_path / "pairs.zip", f"{tmp_path / 'pairs.zip'}:fra.txt"
    error = one_line_error(["fit", "--data.dataset=tsv", f"--data.path={path}", "--trainer.fast_dev_run=true"], capsys)
    assert f"{where}{message}" in error


def test_unsupported_cldr_language_ends_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    error = one_line_error(["fit", "--data.dataset=cldr", "--data.target_lang=xx", "--trainer.fast_dev_run=true"], capsys)
    assert "--data.target_lang xx: not a language the cldr generator supports" in error


def test_missing_tsv_and_predict_inputs_end_in_one_line(checkpoint: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    error = one_line_error(["fit", "--data.dataset=tsv", "--data.path=nope.txt", "--trainer.fast_dev_run=true"], capsys)
    assert "--data.path nope.txt: no such file" in error
    (tmp_path / "bad.txt").write_bytes(b"fine\n\xff\xfe broken\n")
    error = one_line_error(["predict", f"--ckpt_path={checkpoint}", "--data.predict_path=bad.txt", "--output=o.csv"], capsys)
    assert "bad.txt:2: not UTF-8 text" in error
    assert not (tmp_path / "o.csv").exists()


def test_generator_errors_are_data_errors() -> None:
    with pytest.raises(DataError, match="nothing to translate"):
        generate_pairs(10, "fr", "fr")
