"""The sentiment app's LSTM (default config) against TF-IDF + logistic regression on the same split.

    python -m benchmarks.sentiment_baseline [--data.dataset=tweets ...]

Both see the DataModule's seeded split of whatever ``--data.dataset=auto`` picks (the tweet corpus
offline). The baseline is TF-IDF over word 1- and 2-grams (sublinear tf) with scikit-learn's
logistic regression; its C is chosen on the val split, then it is refit on train + val (more data
than the LSTM, which trains on train only and uses val to pick its checkpoint). The LSTM is
``python -m apps.sentiment fit`` with the defaults plus any options given here; its wall time
includes tokenizer training and the final test.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time

import yaml
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

import apps.sentiment.__main__ as sentiment_app
from datamodules.sentiment import SentimentDataModule

C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)


def tfidf_accuracy(dm: SentimentDataModule) -> tuple[float, float]:
    """Test accuracy of TF-IDF (1-2 grams) + logistic regression, and the C picked on val."""

    def fit(texts: list[str], labels: list[str], c: float):
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)
        model = LogisticRegression(C=c, max_iter=2000).fit(vectorizer.fit_transform(texts), labels)
        return lambda x, y: model.score(vectorizer.transform(x), y)

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (dm.texts[s] for s in ("train", "val", "test"))
    best_c = max(C_GRID, key=lambda c: fit(train_x, train_y, c)(val_x, val_y))
    return fit(train_x + val_x, train_y + val_y, best_c)(test_x, test_y), best_c


def lstm_accuracy(options: list[str]) -> tuple[float, float]:
    """Test accuracy of a default `fit`, and its wall time in seconds."""
    out = io.StringIO()
    args = ["fit", "--trainer.logger=false", "--trainer.enable_progress_bar=false", *options]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir, contextlib.chdir(workdir), contextlib.redirect_stdout(out):
        sentiment_app.main(args)
    seconds = time.perf_counter() - started
    line = next(l for l in out.getvalue().splitlines() if l.startswith("test metrics: "))
    metrics = dict(pair.split("=") for pair in line.split()[2:])
    return float(metrics["test/acc"]), seconds


def main() -> None:
    options = sys.argv[1:]
    data = {
        key.removeprefix("--data."): yaml.safe_load(value)
        for key, value in (o.split("=", 1) for o in options if o.startswith("--data."))
    }
    dm = SentimentDataModule(**data)
    dm.prepare_data()
    dm.setup("fit")
    data["dataset"] = dm.hparams.dataset  # the source auto picked, so the LSTM trains on the same one
    tfidf, c = tfidf_accuracy(dm)
    lstm, seconds = lstm_accuracy([o for o in options if not o.startswith("--data.dataset=")] + [f"--data.dataset={data['dataset']}"])
    sizes = ", ".join(f"{len(dm.texts[s][0])} {s}" for s in ("train", "val", "test"))
    print(f"\n{dm.hparams.dataset}, seeded split (seed {dm.hparams.seed}): {sizes}; {os.cpu_count()} CPU cores")
    print("| model | test accuracy |")
    print("|---|---|")
    print(f"| TF-IDF word 1-2 grams + logistic regression (C={c:g} picked on val, fit on train + val) | {tfidf:.4f} |")
    print(f"| 2-layer BiLSTM, `python -m apps.sentiment fit` defaults ({seconds:.0f} s) | {lstm:.4f} |")


if __name__ == "__main__":
    main()
