"""Writes ``predict`` results: one record per input, in input order, to a .csv or .jsonl file."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from datamodules.sources import DataError

FORMATS = (".csv", ".jsonl")


class PredictionWriter(BasePredictionWriter):
    """Pairs each record of ``predict_step`` with the DataModule's ``predict_inputs`` and writes them.

    The file appears only when every input has its prediction: a failed run leaves none behind.
    """

    def __init__(self, path: str) -> None:
        super().__init__(write_interval="epoch")
        self.path = Path(path)
        if self.path.suffix not in FORMATS:
            raise DataError(f"--output {path}: name a {' or '.join(FORMATS)} file")
        if not self.path.parent.is_dir():
            raise DataError(f"--output {path}: folder {self.path.parent} does not exist")
        self.path.unlink(missing_ok=True)  # no stale result survives a failed run

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: list[Any], batch_indices: list[Any]
    ) -> None:
        records = [record for batch in predictions for record in batch]
        inputs = trainer.datamodule.predict_inputs
        if len(records) != len(inputs):
            raise RuntimeError(f"{len(inputs)} inputs but {len(records)} predictions")
        rows = [{"input": text, **record} for text, record in zip(inputs, records)]
        partial = self.path.with_name(self.path.name + ".partial")
        with partial.open("w", newline="", encoding="utf-8") as f:
            if self.path.suffix == ".csv":
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            else:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        partial.replace(self.path)
        print(f"wrote {len(rows)} predictions to {self.path}")
