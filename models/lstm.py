"""The recurrent text classifier of ``python -m apps.sentiment``. Plain PyTorch, no Lightning.

``LSTMClassifier``: embedding -> stacked (bi)LSTM -> max over positions (or last states) -> linear head. The recurrent
core is either ``nn.LSTM`` over packed sequences (``cell="fused"``, cuDNN/oneDNN kernels) or
``LayerNormLSTM``, the same recurrence written out gate by gate with layer normalisation
(``cell="layernorm"``, Ba et al. 2016), to read and to compare against.
Both ignore padding: a padded position never changes a text's prediction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

Cell = Literal["fused", "layernorm"]
Pooling = Literal["last", "max"]


class LayerNormLSTMCell(nn.Module):
    """One LSTM step with layer-normalised gate pre-activations and cell output.

    gates = LN(W x) + LN(U h) + b, split into input i, forget f, candidate g and output o;
    c' = sigmoid(f) * c + sigmoid(i) * tanh(g);  h' = sigmoid(o) * tanh(LN(c')).
    Normalising each pre-activation keeps the gates in their responsive range whatever the scale of
    the inputs, which steadies training of long recurrences.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.input_to_gates = nn.Linear(input_size, 4 * hidden_size, bias=False)
        self.hidden_to_gates = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.norm_input = nn.LayerNorm(4 * hidden_size)
        self.norm_hidden = nn.LayerNorm(4 * hidden_size)
        self.norm_cell = nn.LayerNorm(hidden_size)
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        with torch.no_grad():  # forget-gate bias 1: remember by default early in training
            self.bias[hidden_size : 2 * hidden_size] = 1.0

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, I), state (h, c) each (B, H) -> new (h, c)."""
        h, c = state
        gates = self.norm_input(self.input_to_gates(x)) + self.norm_hidden(self.hidden_to_gates(h)) + self.bias
        input_gate, forget_gate, candidate, output_gate = gates.chunk(4, dim=-1)  # each (B, H)
        c = torch.sigmoid(forget_gate) * c + torch.sigmoid(input_gate) * torch.tanh(candidate)
        h = torch.sigmoid(output_gate) * torch.tanh(self.norm_cell(c))
        return h, c


def reverse_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of ``x`` (B, T, D) within its own length; padding stays at the end."""
    t = torch.arange(x.shape[1], device=x.device)
    lengths = lengths.to(x.device).unsqueeze(1)
    index = torch.where(t < lengths, lengths - 1 - t, t)  # (B, T)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class LayerNormLSTM(nn.Module):
    """Stacked, optionally bidirectional LSTM of ``LayerNormLSTMCell`` steps, a Python loop over time.

    Padded batches with lengths instead of packed sequences: at step t only the rows with
    ``t < length`` update their state, so a text's final state is the one at its own last token, and
    the backward direction starts at each text's last token (``reverse_valid``), as packing gives
    ``nn.LSTM``. Dropout is applied to the outputs of every layer but the last, as in ``nn.LSTM``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool, dropout: float) -> None:
        super().__init__()
        self.directions = 2 if bidirectional else 1
        self.cells = nn.ModuleList(
            nn.ModuleList(
                LayerNormLSTMCell(input_size if layer == 0 else hidden_size * self.directions, hidden_size)
                for _ in range(self.directions)
            )
            for layer in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)

    def run(self, cell: LayerNormLSTMCell, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One direction of one layer: x (B, T, I) -> outputs (B, T, H) and final h (B, H)."""
        b, steps, _ = x.shape
        h = c = x.new_zeros(b, cell.hidden_size)
        valid = (torch.arange(steps, device=x.device) < lengths.to(x.device).unsqueeze(1)).unsqueeze(-1)  # (B, T, 1)
        outputs = []
        for t in range(steps):
            h_new, c_new = cell(x[:, t], (h, c))
            h, c = torch.where(valid[:, t], h_new, h), torch.where(valid[:, t], c_new, c)
            outputs.append(h)
        return torch.stack(outputs, 1) * valid, h

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, I) padded, lengths (B,) -> the last layer's outputs (B, T, directions * H), zero
        where padded, and its final hidden states (B, directions * H)."""
        for i, layer in enumerate(self.cells):
            if i:
                x = self.dropout(x)
            forward_out, forward_h = self.run(layer[0], x, lengths)
            outputs, finals = [forward_out], [forward_h]
            if self.directions == 2:
                backward_out, backward_h = self.run(layer[1], reverse_valid(x, lengths), lengths)
                outputs.append(reverse_valid(backward_out, lengths))
                finals.append(backward_h)
            x = torch.cat(outputs, -1)  # (B, T, directions * H)
        return x, torch.cat(finals, -1)


class LSTMClassifier(nn.Module):
    """Embedding -> ``num_layers`` LSTM layers -> pooled states -> linear.

    ``pooling="last"`` classifies from the final hidden states (of both directions);
    ``pooling="max"`` from the element-wise maximum of the last layer's outputs over the text's own
    positions, which lets a strong word anywhere in the text decide, not only what the state at the
    end remembers (Conneau et al. 2017 found max pooling best for BiLSTM sentence encoders).

    Args:
        vocab_size: Rows of the embedding; token 0 is padding.
        num_classes: Output logits.
        embedding_dim: Size of a token vector (that of the GloVe file, when one is loaded).
        hidden_size: LSTM state size per direction.
        num_layers: Stacked LSTM layers.
        bidirectional: Also read each text backwards and concatenate both final states.
        dropout: Dropout on the embeddings, between LSTM layers and before the head.
        cell: ``fused`` (``nn.LSTM`` on packed sequences) or ``layernorm`` (``LayerNormLSTM``).
        pooling: ``last`` (final hidden states) or ``max`` (max over positions of the last layer's outputs).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embedding_dim: int = 64,
        hidden_size: int = 64,
        num_layers: int = 2,
        bidirectional: bool = True,
        dropout: float = 0.4,
        cell: Cell = "fused",
        pooling: Pooling = "max",
    ) -> None:
        super().__init__()
        if pooling not in ("last", "max"):
            raise ValueError(f"pooling must be 'last' or 'max', not {pooling!r}")
        self.pooling = pooling
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.cell = cell
        if cell == "fused":
            self.rnn: nn.Module = nn.LSTM(
                embedding_dim, hidden_size, num_layers, batch_first=True,
                dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional,
            )
        elif cell == "layernorm":
            self.rnn = LayerNormLSTM(embedding_dim, hidden_size, num_layers, bidirectional, dropout)
        else:
            raise ValueError(f"cell must be 'fused' or 'layernorm', not {cell!r}")
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) padded with 0, lengths (B,) >= 1 -> (B, num_classes) logits."""
        x = self.dropout(self.embedding(tokens))  # (B, T, E)
        if self.cell == "fused":
            # Packing skips the padding: each direction runs exactly `length` steps per text.
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            packed_out, (h_n, _) = self.rnn(packed)  # h_n (num_layers * directions, B, H)
            directions = 2 if self.rnn.bidirectional else 1
            final = torch.cat(list(h_n[-directions:]), -1)  # last layer, both directions: (B, directions * H)
            if self.pooling == "max":
                outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=tokens.shape[1])
        else:
            outputs, final = self.rnn(x, lengths)  # (B, T, directions * H), (B, directions * H)
        if self.pooling == "max":
            padded = torch.arange(tokens.shape[1], device=tokens.device) >= lengths.to(tokens.device).unsqueeze(1)
            final = outputs.masked_fill(padded.unsqueeze(-1), float("-inf")).amax(1)  # (B, directions * H)
        return self.head(self.dropout(final))

    @torch.no_grad()
    def load_embeddings(self, vectors: torch.Tensor, found: torch.Tensor, freeze: bool) -> None:
        """Copy ``vectors`` (V, E) into the embedding rows where ``found`` (V,) is true; ``freeze``
        stops training the whole embedding (words missing from the file keep their random vectors)."""
        self.embedding.weight[found] = vectors[found].to(self.embedding.weight)
        self.embedding.weight.requires_grad_(not freeze)


def read_glove(path: str | Path, vocab: dict[str, int], vocab_size: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectors of a GloVe-format text file (``word v1 v2 ... v_dim`` per line) for the words of ``vocab``.

    Returns vectors (vocab_size, dim) and found (vocab_size,) bool. Words are matched lower-cased, as the
    tokenizer lower-cases; the first occurrence wins. Raises ValueError naming the line of a bad vector.
    """
    vectors = torch.zeros(vocab_size, dim)
    found = torch.zeros(vocab_size, dtype=torch.bool)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_number, line in enumerate(f, start=1):
            word, *values = line.rstrip().split(" ")
            index = vocab.get(word.lower())
            if index is None or index >= vocab_size or found[index] or not values:
                continue
            if len(values) != dim:
                raise ValueError(f"{path}, line {line_number}: {len(values)} values, the embedding has {dim}")
            try:
                vectors[index] = torch.tensor([float(v) for v in values])
            except ValueError:
                raise ValueError(f"{path}, line {line_number}: not a vector of numbers") from None
            found[index] = True
    return vectors, found
