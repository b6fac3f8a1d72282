"""Sentiment of a text with a 2-layer bidirectional LSTM: ``python -m apps.sentiment fit``."""

from __future__ import annotations

import random
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from datamodules.base import DataError
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from models.base import Classifier
from models.lstm import Cell, LSTMClassifier, Pooling, read_glove


class SentimentClassifier(Classifier):
    """An ``LSTMClassifier`` trained with cross-entropy; tests log a W&B table of example texts and,
    when test batches carry each text's domain (``((tokens, lengths), target, domain)``), the accuracy
    per domain as ``test/acc_<domain>``.

    The embedding starts from pretrained vectors when the DataModule has them
    (``pretrained_vectors()``, read at ``fit``) or from a GloVe file (``glove_path``); the checkpoint
    then holds the vectors, so ``test`` and ``predict`` need no vectors file.

    Args:
        label_names: Class names in label order; linked from the DataModule.
        vocab_size: Rows of the token embedding; linked from the DataModule's tokenizer size.
        pad_id: Token id of padding; linked from the DataModule.
        unk_id: Token id of unknown words, which word dropout puts in; linked from the DataModule.
        embedding_dim: Size of a token vector; must match the pretrained vectors or the GloVe file.
        hidden_size: LSTM state size per direction.
        num_layers: Stacked LSTM layers.
        bidirectional: Read texts in both directions.
        dropout: Dropout on embeddings, between LSTM layers and before the head.
        cell: ``fused`` (``nn.LSTM`` kernels: oneDNN on CPU, cuDNN on CUDA) or ``layernorm`` (step-by-step
            layer-normalised cell).
        pooling: ``max`` (over the last layer's outputs), ``max_mean`` (max and mean, concatenated) or
            ``last`` (final hidden states) feeds the head.
        word_dropout: Share of training tokens replaced by the unknown-word token.
        glove_path: GloVe-format text file (``word v1 v2 ...``) to initialise the embedding from at ``fit``.
        freeze_embedding: Keep pretrained or GloVe vectors fixed in training; an embedding that starts
            from random vectors always trains.
        optimizer: Optimizer class and arguments.
        scheduler: Optional learning-rate scheduler.
        label_smoothing: Cross-entropy label smoothing.
        table_rows: Test examples in the W&B table, half of them misclassified when there are enough.
    """

    def __init__(
        self,
        label_names: list[str],
        vocab_size: int = 20000,
        pad_id: int = 0,
        unk_id: int = 1,
        embedding_dim: int = 384,
        hidden_size: int = 64,
        num_layers: int = 2,
        bidirectional: bool = True,
        dropout: float = 0.3,
        cell: Cell = "fused",
        pooling: Pooling = "max",
        word_dropout: float = 0.0,
        glove_path: str | None = None,
        freeze_embedding: bool = True,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        table_rows: int = 100,
    ) -> None:
        super().__init__(label_names, optimizer, scheduler, label_smoothing)
        self.net = LSTMClassifier(
            vocab_size, len(label_names), embedding_dim, hidden_size, num_layers, bidirectional, dropout, cell, pooling,
            word_dropout, unk_id, pad_id,
        )
        self.examples: dict[bool, list[list[Any]]] = {True: [], False: []}  # correct? -> table rows
        self.seen = {True: 0, False: 0}
        self.sampler = random.Random(0)
        self.domain_acc = nn.ModuleDict()  # domain -> test accuracy, built when a test starts

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        tokens, lengths = inputs  # (B, T), (B,)
        return self.net(tokens, lengths)

    def setup(self, stage: str) -> None:
        """At ``fit``, start the embedding from the DataModule's pretrained vectors or from GloVe vectors
        for the words of its tokenizer (its ``setup`` runs first). When resuming, the checkpoint's
        weights are restored after this."""
        if stage != "fit":
            return
        h = self.hparams
        pretrained = getattr(self.trainer.datamodule, "pretrained_vectors", lambda: None)()
        if pretrained is not None:
            if h.glove_path is not None:
                raise DataError("--model.glove_path and --data.vectors both give vectors: set --data.vectors=null to use GloVe")
            if tuple(pretrained.shape) != (h.vocab_size, h.embedding_dim):
                raise DataError(
                    f"--data.vectors {self.trainer.datamodule.hparams.vectors}: vectors of shape {tuple(pretrained.shape)}, "
                    f"but the model's embedding is ({h.vocab_size}, {h.embedding_dim}); set --model.embedding_dim={pretrained.shape[1]}"
                )
            self.net.load_embeddings(pretrained, torch.ones(len(pretrained), dtype=torch.bool), h.freeze_embedding)
            return
        if h.glove_path is None:
            return
        tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)
        if tokenizer is None:
            raise DataError("--model.glove_path needs a DataModule with a trained tokenizer")
        try:
            vectors, found = read_glove(h.glove_path, tokenizer.get_vocab(), h.vocab_size, h.embedding_dim)
        except OSError as err:
            raise DataError(f"--model.glove_path {h.glove_path}: {err.strerror or err}") from None
        except ValueError as err:
            raise DataError(str(err)) from None
        self.net.load_embeddings(vectors, found, h.freeze_embedding)
        self.print(f"GloVe: vectors for {int(found.sum())} of {tokenizer.get_vocab_size()} tokens from {h.glove_path}")

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self.examples, self.seen, self.sampler = {True: [], False: []}, {True: 0, False: 0}, random.Random(0)
        domains = getattr(self.trainer.datamodule, "test_domains", [])
        n = len(self.hparams.label_names)
        self.domain_acc = nn.ModuleDict({d: MulticlassAccuracy(n, average="micro") for d in domains}).to(self.device)

    def on_test_predictions(self, batch: tuple, probs: torch.Tensor) -> None:
        """Keep a uniform sample of up to ``table_rows / 2`` correct and misclassified examples each
        (reservoir sampling: test batches come sorted by length, so the first ones are the shortest)."""
        (tokens, lengths), target = batch[:2]
        if len(batch) == 3 and self.domain_acc:
            names = list(self.domain_acc)
            for index in batch[2].unique().tolist():
                rows = batch[2] == index
                self.domain_acc[names[index]].update(probs[rows], target[rows])
        decode = getattr(self.trainer.datamodule, "decode", None)
        if decode is None:
            return
        prob, predicted = probs.max(-1)
        names = self.hparams.label_names
        domains = list(self.domain_acc) if len(batch) == 3 else []
        for row in range(len(target)):
            correct = bool(predicted[row] == target[row])
            kept, cap = self.examples[correct], self.hparams.table_rows // 2
            self.seen[correct] += 1
            slot = len(kept) if len(kept) < cap else self.sampler.randrange(self.seen[correct])
            if slot < cap:
                text = decode(tokens[row, : lengths[row]].tolist())
                label, guess = names[int(target[row])], names[int(predicted[row])]
                example = [text, label, guess, round(float(prob[row]), 4), not correct]
                if domains:
                    example.append(domains[int(batch[2][row])])
                kept[slot:slot + 1] = [example]

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self.domain_acc:
            # A domain with no test text on any rank has no accuracy; every rank decides alike.
            counts = self.all_gather(torch.tensor([acc.update_count for acc in self.domain_acc.values()], device=self.device))
            seen = counts.reshape(-1, len(self.domain_acc)).sum(0)
            for (domain, accuracy), count in zip(self.domain_acc.items(), seen.tolist()):
                if count:
                    self.log(f"test/acc_{domain}", accuracy)
        columns = ["text", "true label", "predicted label", "probability", "misclassified"]
        columns += ["domain"] if self.domain_acc else []
        self.log_table("test/examples", columns, self.examples[False] + self.examples[True])
