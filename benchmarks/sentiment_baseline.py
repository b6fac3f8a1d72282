"""The sentiment app's LSTM (default config) against TF-IDF + logistic regression on the same split,
overall and per domain, and on 50 plain reviews written for this project (``tests/plain_reviews.csv``).

    python -m benchmarks.sentiment_baseline [--data.dataset=reviews ...] [--model.* ...] [--trainer.* ...]

Both see the DataModule's seeded split of whatever ``--data.dataset=auto`` picks (the review corpus
when pip can fetch it, else the tweet corpus). The baseline is TF-IDF over word 1- and 2-grams
(sublinear tf) with scikit-learn's logistic regression, fit on the train split with its C chosen on
the val split: the same data the LSTM gets, which trains on train only and uses val only to pick its
checkpoint. The LSTM is ``python -m apps.sentiment fit`` with the defaults plus any options given
here; its wall time includes reading the data, the tokenizer and the final test. Then the LSTM's best
checkpoint predicts the plain reviews, and the baseline (fit on train) labels them too.

The goals (``row``): overall test accuracy above the baseline's by more than two standard errors
(the binomial standard error of the LSTM's accuracy on the test split), movie snippets at least 0.80,
and at most 2 of the 50 plain reviews wrong.

``row(quick)`` is this comparison as a ``python -m benchmarks`` row (full runs only: minutes).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
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

C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
PLAIN_REVIEWS = Path(__file__).resolve().parents[1] / "tests" / "plain_reviews.csv"
MOVIES_GOAL, PLAIN_MISTAKES_GOAL = 0.80, 2


def plain_reviews() -> tuple[list[str], list[str]]:
    with PLAIN_REVIEWS.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def tfidf(dm: SentimentDataModule) -> dict:
    """TF-IDF (1-2 grams) + logistic regression fit on train with C picked on val: test accuracy overall
    and per domain, val accuracy, C, and its mistakes on the plain reviews."""

    def fit(texts: list[str], labels: list[str], c: float):
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)
        model = LogisticRegression(C=c, max_iter=2000).fit(vectorizer.fit_transform(texts), labels)
        return lambda x: model.predict(vectorizer.transform(x))

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (dm.texts[s] for s in ("train", "val", "test"))
    accuracy = lambda predicted, truth: sum(p == t for p, t in zip(predicted, truth)) / len(truth)  # noqa: E731
    val = {c: accuracy(fit(train_x, train_y, c)(val_x), val_y) for c in C_GRID}
    best_c = max(C_GRID, key=val.get)
    predict = fit(train_x, train_y, best_c)
    predicted = list(predict(test_x))
    result = {"test/acc": accuracy(predicted, test_y), "val": val[best_c], "c": best_c}
    for index, domain in enumerate(dm.domain_names if dm.text_domains else []):
        rows = [i for i, d in enumerate(dm.text_domains["test"]) if d == index]
        result[f"test/acc_{domain}"] = accuracy([predicted[i] for i in rows], [test_y[i] for i in rows])
    texts, labels = plain_reviews()
    result["plain_mistakes"] = sum(p != t for p, t in zip(predict(texts), labels))
    return result


def lstm(options: list[str]) -> dict:
    """Test metrics of a default `fit` (overall and per domain), its wall time, and the mistakes of its
    best checkpoint on the plain reviews."""
    out = io.StringIO()
    args = ["fit", "--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir=.",
            "--trainer.enable_progress_bar=false", *options]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir, contextlib.chdir(workdir), contextlib.redirect_stdout(out):
        sentiment_app.main(args)
        seconds = time.perf_counter() - started
        lines = out.getvalue().splitlines()
        metrics = dict(pair.split("=") for pair in next(l for l in lines if l.startswith("test metrics: ")).split()[2:])
        checkpoint = next(l for l in lines if l.startswith("checkpoint: ")).split(": ", 1)[1]
        texts, labels = plain_reviews()
        sentiment_app.main(["predict", f"--ckpt_path={checkpoint}", "--trainer.logger=false", "--output=plain.jsonl",
                            "--trainer.enable_progress_bar=false", f"--data.predict_texts={json.dumps(texts)}"])
        predicted = [json.loads(line)["label"] for line in Path("plain.jsonl").read_text().splitlines()]
    result = {key: float(value) for key, value in metrics.items()}
    result["plain_mistakes"] = sum(p != t for p, t in zip(predicted, labels))
    result["seconds"] = seconds
    return result


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
    baseline = tfidf(dm)
    model = lstm([o for o in options if not o.startswith("--data.dataset=")] + [f"--data.dataset={dataset}"])
    n_test = len(dm.texts["test"][0])
    sizes = ", ".join(f"{len(dm.texts[s][0]):,} {s}" for s in ("train", "val", "test"))
    error = math.sqrt(model["test/acc"] * (1 - model["test/acc"]) / n_test)
    return dict(dataset=dataset, seed=dm.hparams.seed, sizes=sizes, tfidf=baseline, lstm=model, error=error,
                domains=dm.domain_names if dataset == "reviews" else [])


def goals(r: dict) -> dict[str, bool]:
    met = {"overall": r["lstm"]["test/acc"] > r["tfidf"]["test/acc"] + 2 * r["error"],
           "plain reviews": r["lstm"]["plain_mistakes"] <= PLAIN_MISTAKES_GOAL}
    if "movies" in r["domains"]:
        met["movies"] = r["lstm"]["test/acc_movies"] >= MOVIES_GOAL
    return met


def row(quick: bool) -> Row:
    """The benchmarks row: default `fit` against the baseline fit on the same train split (minutes)."""
    name = "LSTM vs TF-IDF + logistic regression, test accuracy"
    goal = f"> baseline + 2 SE; movies >= {MOVIES_GOAL}; <= {PLAIN_MISTAKES_GOAL} of 50 plain reviews wrong"
    if quick:
        return full_run_only(name, goal, "`python -m apps.sentiment fit` defaults against the baseline, minutes")
    r = compare([])
    domains = ", ".join(f"{d} {r['lstm'][f'test/acc_{d}']:.3f} vs {r['tfidf'][f'test/acc_{d}']:.3f}" for d in r["domains"])
    return Row(
        name,
        measured=f"{r['lstm']['test/acc']:.4f} vs {r['tfidf']['test/acc']:.4f} (SE {r['error']:.4f}); {domains}; "
        f"plain reviews wrong: {r['lstm']['plain_mistakes']:.0f} vs {r['tfidf']['plain_mistakes']}",
        goal=goal,
        met=all(goals(r).values()),
        data=f"`python -m apps.sentiment fit` defaults ({r['lstm']['seconds']:.0f} s), {r['dataset']}: {r['sizes']}; "
        f"both trained on train, C and checkpoint picked on val; baseline C={r['tfidf']['c']:g}",
    )


def main() -> None:
    r = compare(sys.argv[1:])
    print(f"\n{r['dataset']}, seeded split (seed {r['seed']}): {r['sizes']}; the LSTM's test SE {r['error']:.4f}")
    columns = ["test/acc", *[f"test/acc_{d}" for d in r["domains"]]]
    print("| model | " + " | ".join(c.removeprefix("test/") for c in columns) + " | plain reviews wrong (of 50) | time |")
    print("|---|" + "---|" * (len(columns) + 2))
    for label, result, seconds in (
        (f"TF-IDF 1-2 grams + logistic regression (C={r['tfidf']['c']:g})", r["tfidf"], "-"),
        ("2-layer BiLSTM, `python -m apps.sentiment fit` defaults", r["lstm"], f"{r['lstm']['seconds']:.0f} s"),
    ):
        cells = [f"{result[c]:.4f}" for c in columns]
        print(f"| {label} | " + " | ".join(cells) + f" | {result['plain_mistakes']:.0f} | {seconds} |")
    print("goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in goals(r).items()))


if __name__ == "__main__":
    main()
