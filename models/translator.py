"""Training and evaluation of the attention RNN translator: ``python -m apps.translate fit``.

Loss is token-level cross-entropy on teacher-forced decoding; validation decodes greedily and test
with beam search, and both score the decoded texts with BLEU, chrF and exact match. The texts come
from the DataModule's target tokenizer (``trainer.datamodule.decode``), which the checkpoint carries.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from matplotlib.figure import Figure
from torchmetrics import MeanMetric
from torchmetrics.text import BLEUScore, CHRFScore, Perplexity

from models.base import TrainingModule, stage_metrics
from models.seq2seq import Seq2Seq


class Translator(TrainingModule):
    """A ``Seq2Seq`` net trained with cross-entropy; reports BLEU, chrF, exact match and perplexity.

    Args:
        source_vocab_size: Source vocabulary size; linked from the DataModule.
        target_vocab_size: Target vocabulary size; linked from the DataModule.
        pad_id: Padding token id (both vocabularies); linked from the DataModule.
        bos_id: Begin-of-sentence id, the first decoder input; linked from the DataModule.
        eos_id: End-of-sentence id, where decoding stops; linked from the DataModule.
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
        pad_id: int = 0,
        bos_id: int = 2,
        eos_id: int = 3,
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
        super().__init__(optimizer, scheduler)
        self.net = Seq2Seq(
            source_vocab_size, target_vocab_size, embedding_dim, hidden_size, rnn, attention, dropout,
            pad_id=pad_id, bos_id=bos_id, eos_id=eos_id,
        )
        self.metrics = stage_metrics(  # no train metrics: training decodes nothing
            {"bleu": BLEUScore(), "chrf": CHRFScore(), "exact_match": MeanMetric(), "perplexity": Perplexity(pad_id)},
            stages=("val", "test"),
        )
        self.samples: list[list[str]] = []
        self.attention_maps: list[tuple[list[str], list[str], torch.Tensor]] = []

    def forward(self, batch: dict[str, Any], teacher_forcing: float = 1.0) -> torch.Tensor:
        """Logits (B, T-1, V) of every target token after ``[BOS]``."""
        return self.net(batch["source"], batch["source_lengths"], batch["target"][:, :-1], teacher_forcing)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy per real target token; padding counts for nothing."""
        return F.cross_entropy(
            logits.transpose(1, 2), target, ignore_index=self.hparams.pad_id, label_smoothing=self.hparams.label_smoothing
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
        self.log_loss("train", loss)
        return loss

    def _evaluate(self, batch: dict[str, Any], stage: str, beam_size: int) -> list[str]:
        target = batch["target"][:, 1:]  # (B, T-1)
        logits = self(batch)
        self.log_loss(stage, self.loss(logits, target), batch_size=len(logits))
        hypotheses, _, _ = self.translate(batch, beam_size)
        references = batch["target_text"]
        metrics = self.metrics[f"{stage}_metrics"]  # accumulated; logged at the epoch's end
        metrics["perplexity"].update(logits.float(), target)
        metrics["bleu"].update(hypotheses, [[r] for r in references])
        metrics["chrf"].update(hypotheses, [[r] for r in references])
        exact = [h == r for h, r in zip(hypotheses, references)]
        metrics["exact_match"].update(torch.tensor(exact, dtype=torch.float, device=self.device))
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
        """Keep the attention of the batch's first ``attention_plots`` sentences for the test's heatmaps."""
        n = self.hparams.attention_plots
        self.attention_maps += self.greedy_attention({"source": batch["source"][:n], "source_lengths": batch["source_lengths"][:n]})

    def greedy_attention(self, batch: dict[str, Any]) -> list[tuple[list[str], list[str], torch.Tensor]]:
        """Per sentence of the batch: its source tokens, its greedy translation's tokens up to ``[EOS]``,
        and the attention weights (output tokens, source tokens). Also what ``serve`` shows."""
        source, lengths = batch["source"], batch["source_lengths"]
        tokens, _, weights = self.net.greedy(source, lengths, self.hparams.max_length)  # (B, L, S)
        data, eos, maps = self.trainer.datamodule, self.hparams.eos_id, []
        for row in range(len(source)):
            s = int(lengths[row])
            out = tokens[row].tolist()
            t = out.index(eos) + 1 if eos in out else len(out)  # the translation and its [EOS]
            maps.append((data.tokens(source[row, :s].tolist(), "source"), data.tokens(out[:t], "target"), weights[row, :t, :s].cpu()))
        return maps

    def on_test_epoch_start(self) -> None:
        self.samples, self.attention_maps = [], []

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self.attention_maps:
            self.log_image("test/attention", self.attention_figure(), "attention of each output token over the source tokens")
        self.log_table("test/samples", ["source", "reference", "translation", "exact"], self.samples)

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
