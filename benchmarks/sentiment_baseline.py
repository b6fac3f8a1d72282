"""The sentiment app's LSTM (default config) against TF-IDF + logistic regression on the same split.

    python -m benchmarks.sentiment_baseline [--data.dataset=tweets ...] [--model.* ...] [--trainer.* ...]

Both see the DataModule's seeded split of whatever ``--data.dataset=auto`` picks (the tweet corpus
offline). The baseline is TF-IDF over word 1- and 2-grams (sublinear tf) with scikit-learn's
logistic regression, fit on the train split with its C chosen on the val split: the same data the
LSTM gets, which trains on train only and uses val only to pick its checkpoint. That is the
comparison's headline (and the goal of ``row``). The baseline refit on train + val with the same C is
printed beside it for transparency; it trains on more text than the LSTM (14% more on the tweets),
so it is not the like-for-like figure. The LSTM is ``python -m apps.sentiment fit`` with the defaults
plus any options given here; its wall time includes tokenizer training and the final test. Val
accuracy is printed beside test accuracy: that of the LSTM's checkpointed epoch (the best val
macro-F1), and that of the baseline at the C picked on val (so both are optimistic). Choose settings
by val, not test.

``row(quick)`` is this comparison as a ``python -m benchmarks`` row (full runs only: a few minutes).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

import apps.sentiment.__main__ as sentiment_app
from benchmarks.harness import Row, full_run_only
from datamodules.sentiment import SentimentDataModule

C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)


def tfidf_accuracy(dm: SentimentDataModule) -> tuple[float, float, float, float]:
    """TF-IDF (1-2 grams) + logistic regression with C picked on val: test accuracy fit on train only
    (the LSTM's data), test accuracy refit on train + val, val accuracy (fit on train), and C."""

    def fit(texts: list[str], labels: list[str], c: float):
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)
        model = LogisticRegression(C=c, max_iter=2000).fit(vectorizer.fit_transform(texts), labels)
        return lambda x, y: model.score(vectorizer.transform(x), y)

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (dm.texts[s] for s in ("train", "val", "test"))
    val = {c: fit(train_x, train_y, c)(val_x, val_y) for c in C_GRID}
    best_c = max(C_GRID, key=val.get)
    train_only = fit(train_x, train_y, best_c)(test_x, test_y)
    train_val = fit(train_x + val_x, train_y + val_y, best_c)(test_x, test_y)
    return train_only, train_val, val[best_c], best_c


def lstm_accuracy(options: list[str]) -> tuple[float, float, float]:
    """Test accuracy of a default `fit`, the val accuracy of its checkpointed epoch, and its wall time
    in seconds."""
    out = io.StringIO()
    args = ["fit", "--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir=.",
            "--trainer.enable_progress_bar=false", *options]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir, contextlib.chdir(workdir), contextlib.redirect_stdout(out):
        sentiment_app.main(args)
        seconds = time.perf_counter() - started
        with next(Path().rglob("metrics.csv")).open() as f:
            epochs = [row for row in csv.DictReader(f) if row.get("val/acc")]
    # The checkpoint fit tests is the epoch of best val macro-F1 (the app's monitor).
    best = max(epochs, key=lambda row: float(row["val/macro_f1"]))
    line = next(l for l in out.getvalue().splitlines() if l.startswith("test metrics: "))
    metrics = dict(pair.split("=") for pair in line.split()[2:])
    return float(metrics["test/acc"]), float(best["val/acc"]), seconds


def compare(options: list[str]) -> dict:
    """Both models on the DataModule's split of ``--data.*`` options; the LSTM also takes the others."""
    data = {
        key.removeprefix("--data."): yaml.safe_load(value)
        for key, value in (o.split("=", 1) for o in options if o.startswith("--data."))
    }
    dm = SentimentDataModule(**data)
    dm.prepare_data()
    dm.setup("fit")
    dataset = dm.hparams.dataset  # the source auto picked, so the LSTM trains on the same one
    tfidf, tfidf_train_val, tfidf_val, c = tfidf_accuracy(dm)
    lstm, lstm_val, seconds = lstm_accuracy(
        [o for o in options if not o.startswith("--data.dataset=")] + [f"--data.dataset={dataset}"]
    )
    sizes = ", ".join(f"{len(dm.texts[s][0]):,} {s}" for s in ("train", "val", "test"))
    return dict(dataset=dataset, seed=dm.hparams.seed, sizes=sizes, tfidf=tfidf, tfidf_train_val=tfidf_train_val,
                tfidf_val=tfidf_val, c=c, lstm=lstm, lstm_val=lstm_val, seconds=seconds)


def row(quick: bool) -> Row:
    """The benchmarks row: default `fit` against the baseline fit on the same train split, test accuracy
    (a full run takes minutes); the baseline refit on train + val is noted beside it."""
    name = "LSTM vs TF-IDF + logistic regression (tweets), test accuracy"
    if quick:
        return full_run_only(name, "LSTM >= baseline", "`python -m apps.sentiment fit` defaults against the baseline, a few minutes")
    r = compare([])
    return Row(
        name,
        measured=f"{r['lstm']:.4f} vs {r['tfidf']:.4f} (baseline refit on train + val: {r['tfidf_train_val']:.4f})",
        goal="LSTM >= baseline",
        met=r["lstm"] >= r["tfidf"],
        data=f"`python -m apps.sentiment fit` defaults ({r['seconds']:.0f} s), {r['dataset']}: {r['sizes']}; "
        f"both trained on train, C and checkpoint picked on val; baseline C={r['c']:g}",
    )


def main() -> None:
    r = compare(sys.argv[1:])
    print(f"\n{r['dataset']}, seeded split (seed {r['seed']}): {r['sizes']}; {os.cpu_count()} CPU cores")
    print("| model | val accuracy | test accuracy |")
    print("|---|---|---|")
    print(f"| TF-IDF word 1-2 grams + logistic regression (fit on train, C={r['c']:g} picked on val) "
          f"| {r['tfidf_val']:.4f} | {r['tfidf']:.4f} |")
    print(f"| the same refit on train + val (more training text than the LSTM gets; for reference) "
          f"| | {r['tfidf_train_val']:.4f} |")
    print(f"| 2-layer BiLSTM, `python -m apps.sentiment fit` defaults ({r['seconds']:.0f} s) "
          f"| {r['lstm_val']:.4f} | {r['lstm']:.4f} |")


if __name__ == "__main__":
    main()
