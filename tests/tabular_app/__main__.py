"""A complete app built from the bases, to copy from: ``python -m tabular_app fit`` (in tests/) trains an MLP
on scikit-learn's wine measurements, or on your CSV file (``--data.dataset=csv --data.path=rows.csv``)."""

from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torch.utils.data import TensorDataset

from apps.cli import run_app
from datamodules.base import DataError, OfflineDataModule, seeded_split
from models.base import Classifier


def read_rows(path: str) -> np.ndarray:
    """A CSV file of numbers after a header line; anything else is one error line naming the file."""
    try:
        rows = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, encoding="utf-8")
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a CSV file of numbers ({' '.join(str(err).split())[:100]})") from None
    if rows.size == 0:
        raise DataError(f"{path}: no rows")
    return rows


class TabularDataModule(OfflineDataModule):
    """Rows of numbers, each of a class: ``wine`` (scikit-learn's) or ``csv`` (``path``, the label last).

    Args:
        dataset: ``wine`` or ``csv``.
        path: The CSV file for ``csv``.
        batch_size: Rows per batch.
        num_workers: DataLoader worker processes.
        seed: Seed of the train/val/test split.
        predict_path: For ``predict``: a CSV file of rows without the label.
    """

    def __init__(self, dataset: Literal["wine", "csv"] = "wine", path: str | None = None, batch_size: int = 16,
                 num_workers: int = 0, seed: int = 0, predict_path: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()

    @cached_property
    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        if self.hparams.dataset == "wine":
            from sklearn.datasets import load_wine

            return load_wine(return_X_y=True)
        if self.hparams.path is None:
            raise DataError("--data.dataset=csv needs --data.path: a CSV file of numbers, the label last")
        rows = read_rows(self.hparams.path)
        return rows[:, :-1], rows[:, -1].astype(int)

    @property
    def label_names(self) -> list[str]:
        return [str(label) for label in np.unique(self.rows[1])]

    @property
    def num_features(self) -> int:
        return self.rows[0].shape[1]

    def describe(self, name: str) -> str:
        return "scikit-learn's wine measurements" if name == "wine" else f"the rows of {self.hparams.path}"

    def load(self, name: str) -> None:
        x, y = torch.tensor(self.rows[0], dtype=torch.float), torch.tensor(np.unique(self.rows[1], return_inverse=True)[1])
        splits = seeded_split(len(x), [0.2, 0.2], self.hparams.seed)
        self.splits = {split: TensorDataset(x[rows], y[rows]) for split, rows in zip(("test", "val", "train"), splits)}

    def load_predict(self) -> list[str]:
        if self.hparams.predict_path is None:
            raise DataError("predict needs --data.predict_path: a CSV file of rows without the label")
        self.splits["predict"] = TensorDataset(torch.tensor(read_rows(self.hparams.predict_path), dtype=torch.float))
        return [line for line in Path(self.hparams.predict_path).read_text(encoding="utf-8").splitlines()[1:] if line.strip()]


class TabularClassifier(Classifier):
    """A two-layer perceptron, batch norm first so that raw measurements of any scale train alike.

    Args:
        label_names: Class names; linked from the DataModule.
        num_features: Numbers per row; linked from the DataModule.
        hidden_size: Units of the hidden layer.
        optimizer: Optimizer class and arguments.
    """

    def __init__(self, label_names: list[str], num_features: int, hidden_size: int = 32,
                 optimizer: OptimizerCallable = torch.optim.AdamW) -> None:
        super().__init__(label_names, optimizer)
        self.net = nn.Sequential(nn.BatchNorm1d(num_features), nn.Linear(num_features, hidden_size), nn.ReLU(),
                                 nn.Linear(hidden_size, len(label_names)))


def main(args: list[str] | None = None) -> None:
    run_app(TabularClassifier, TabularDataModule, name="tabular", config=Path(__file__).with_name("config.yaml"),
            monitor="val/acc", links=("label_names", "num_features"), args=args)


if __name__ == "__main__":
    main()
