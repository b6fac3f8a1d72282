"""Training and evaluation of the attention RNN translator: ``python -m apps.translate fit``.

Loss is token-level cross-entropy on teacher-forced decoding; validation decodes greedily and test
with beam search, and both score the decoded texts with BLEU, chrF and exact match. The texts come
from the DataModule's target tokenizer (``trainer.datamodule.decode``), which the checkpoint carries.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.text import BLEUScore, CHRFScore, Perplexity

from datamodules.translation import BOS_ID, EOS_ID, PAD_ID, cut_at_eos
from models.optim import injected_optimizers
from models.reports import TrainLoss, log_image
from models.seq2seq import Seq2Seq

STAGES = ("val", "test")


class Translator(LightningModule):
    """A ``Seq2Seq`` net trained with cross-entropy; reports BLEU, chrF, exact match and perplexity.

    Args:
        source_vocab_size: Source vocabulary size; linked from the DataModule.
        target_vocab_size: Target vocabulary size; linked from the DataModule.
        rnn: ``gru`` or ``lstm`` for encoder and decoder.
        attention: ``additive`` (Bahdanau), ``multiplicative`` (Luong) or ``none`` (the baseline).
        embedding_dim: Token embedding size.
        hidden_size: Encoder units per direction and decoder state size.
        dropout: Dropout on embeddings and before the output layer.
        teacher_forcing: Probability of feeding the true previous token in training (1.0: always).
        label_smoothing: Cross-entropy label smoothing.
        beam_size: Hypotheses kept by beam search in test and predict (1: greedy).
        length_penalty: GNMT length-penalty exponent of beam search (0: raw log-probability).
        max_length: Most target tokens decoded per sentence.
        optimizer: Optimizer class and arguments.
        scheduler: Optional learning-rate scheduler; ``ReduceLROnPlateau`` watches ``val/loss``.
        attention_plots: Test sentences whose attention is drawn as heatmaps.
        sample_rows: Test translations shown in the W&B table.
    """

    def __init__(
        self,
        source_vocab_size: int,
        target_vocab_size: int,
        rnn: Literal["gru", "lstm"] = "gru",
        attention: Literal["additive", "multiplicative", "none"] = "additive",
        embedding_dim: int = 128,
        hidden_size: int = 256,
        dropout: float = 0.1,
        teacher_forcing: float = 1.0,
        label_smoothing: float = 0.0,
        beam_size: int = 4,
        length_penalty: float = 0.6,
        max_length: int = 64,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        attention_plots: int = 4,
        sample_rows: int = 32,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Under LightningCLI the hparams hold these as config (plain data); keep the callables.
        self.optimizer, self.scheduler = optimizer, scheduler
        self.net = Seq2Seq(
            source_vocab_size, target_vocab_size, embedding_dim, hidden_size, rnn, attention, dropout,
            pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        )
        # One set of metrics per stage, so stages never mix their counts.
        self.text_metrics = nn.ModuleDict(
            {stage: MetricCollection({"bleu": BLEUScore(), "chrf": CHRFScore()}, prefix=f"{stage}/") for stage in STAGES}
        )
        self.exact_match = nn.ModuleDict({stage: MeanMetric() for stage in STAGES})
        self.perplexity = nn.ModuleDict({stage: Perplexity(ignore_index=PAD_ID) for stage in STAGES})
        self.train_loss = TrainLoss()
        self.samples: list[list[str]] = []
        self.attention_maps: list[tuple[list[str], list[str], torch.Tensor]] = []

    def forward(self, batch: dict[str, Any], teacher_forcing: float = 1.0) -> torch.Tensor:
        """Logits (B, T-1, V) of every target token after ``[BOS]``."""
        return self.net(batch["source"], batch["source_lengths"], batch["target"][:, :-1], teacher_forcing)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy per real target token; padding counts for nothing."""
        return F.cross_entropy(
            logits.transpose(1, 2), target, ignore_index=PAD_ID, label_smoothing=self.hparams.label_smoothing
        )

    def translate(self, batch: dict[str, Any], beam_size: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """Texts, log-probabilities (B,) and token ids (B, L) of the batch's translations."""
        h = self.hparams
        if beam_size == 1:
            tokens, scores, _ = self.net.greedy(batch["source"], batch["source_lengths"], h.max_length)
        else:
            tokens, scores = self.net.beam_search(
                batch["source"], batch["source_lengths"], beam_size, h.max_length, h.length_penalty
            )
        return self.trainer.datamodule.decode(tokens.tolist()), scores, tokens

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self(batch, self.hparams.teacher_forcing)
        loss = self.loss(logits, batch["target"][:, 1:])
        self.train_loss(self, loss)
        return loss

    def _evaluate(self, batch: dict[str, Any], stage: str, beam_size: int) -> list[str]:
        target = batch["target"][:, 1:]  # (B, T-1)
        logits = self(batch)
        b = len(logits)
        self.log(f"{stage}/loss", self.loss(logits, target), on_epoch=True, prog_bar=True, sync_dist=True, batch_size=b)
        self.perplexity[stage](logits.float(), target)
        self.log(f"{stage}/perplexity", self.perplexity[stage], on_epoch=True, batch_size=b)
        hypotheses, _, _ = self.translate(batch, beam_size)
        references = batch["target_text"]
        metrics = self.text_metrics[stage]
        metrics(hypotheses, [[r] for r in references])
        self.log_dict(metrics, on_epoch=True, prog_bar=True, batch_size=b)
        self.exact_match[stage](torch.tensor([h == r for h, r in zip(hypotheses, references)], dtype=torch.float, device=self.device))
        self.log(f"{stage}/exact_match", self.exact_match[stage], on_epoch=True, prog_bar=True, batch_size=b)
        return hypotheses

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val", beam_size=1)  # greedy: cheap enough for every epoch

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hypotheses = self._evaluate(batch, "test", self.hparams.beam_size)
        # Batches come sorted by length: a few rows of each batch show short and long sentences alike.
        for row in range(min(2, len(hypotheses))):
            if len(self.samples) < self.hparams.sample_rows:
                source, reference, hypothesis = batch["source_text"][row], batch["target_text"][row], hypotheses[row]
                self.samples.append([source, reference, hypothesis, str(hypothesis == reference)])
        middle = self.trainer.num_test_batches[0] // 2 if self.trainer.num_test_batches else 0
        if batch_idx == middle and self.hparams.attention != "none":
            self.collect_attention(batch)

    def collect_attention(self, batch: dict[str, Any]) -> None:
        """Greedy attention weights of the first ``attention_plots`` sentences, with their tokens."""
        n = self.hparams.attention_plots
        source, lengths = batch["source"][:n], batch["source_lengths"][:n]
        tokens, _, weights = self.net.greedy(source, lengths, self.hparams.max_length)  # (n, L, S)
        data = self.trainer.datamodule
        for row in range(len(source)):
            s = int(lengths[row])
            out = tokens[row].tolist()
            t = len(cut_at_eos(out)) + (EOS_ID in out)  # the translation and its [EOS]
            self.attention_maps.append(
                (data.tokens(source[row, :s].tolist(), "source"), data.tokens(out[:t], "target"), weights[row, :t, :s].cpu())
            )

    def on_test_epoch_start(self) -> None:
        self.samples, self.attention_maps = [], []

    def on_test_epoch_end(self) -> None:
        if self.attention_maps:
            log_image(self, "test/attention", self.attention_figure(), "attention of each output token over the source tokens")
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_table("test/samples", columns=["source", "reference", "translation", "exact"], data=self.samples)

    def attention_figure(self) -> Figure:
        """One heatmap per sentence: rows are output tokens, columns source tokens."""
        figure = Figure(figsize=(5 * len(self.attention_maps), 5), layout="constrained")
        for ax, (source, output, weights) in zip(figure.subplots(1, len(self.attention_maps), squeeze=False)[0], self.attention_maps):
            ax.imshow(weights.numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto")
            ax.set_xticks(range(len(source)), source, rotation=90, fontsize=8)
            ax.set_yticks(range(len(output)), output, fontsize=8)
            ax.set_xlabel("source")
        figure.axes[0].set_ylabel("translation")
        return figure

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """One record per sentence: the translation and its probability under the model."""
        texts, scores, _ = self.translate(batch, self.hparams.beam_size)
        return [{"translation": t, "probability": p} for t, p in zip(texts, scores.exp().tolist())]

    def configure_optimizers(self) -> Any:
        return injected_optimizers(self.parameters(), self.optimizer, self.scheduler)
