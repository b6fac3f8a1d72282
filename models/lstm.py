"""The recurrent text classifier of ``python -m apps.sentiment``. Plain PyTorch, no Lightning.

``LSTMClassifier``: embedding -> stacked (bi)LSTM -> max over positions (or last states) -> linear head.
``StackedLSTM`` runs each layer and direction as its own one-directional recurrence over a batch padded
at the end: either ``nn.LSTM`` (``cell="fused"``, the oneDNN kernels on CPU, cuDNN on CUDA) or
``LayerNormLSTMLayer``, the same recurrence written out gate by gate with layer normalisation
(``cell="layernorm"``, Ba et al. 2016), to read and to compare against.

Padding never changes a text's prediction, and no packing is needed for that:

- forward direction: the padding comes after a text's last token, so it cannot reach the outputs at
  the text's own positions;
- backward direction: each text is reversed within its own length (``reverse_valid``), run forwards,
  and reversed back, so it also starts at the text's last token with its padding at the end;
- pooling reads only a text's own positions (masked max, or the states at its first and last token).

Why not ``pack_padded_sequence``: on CPU, ``nn.LSTM`` runs a packed batch step by step outside the
oneDNN kernel, slower than the same batch unpacked and slower even than padding every batch to 512
tokens (BENCHMARKS.md, "Sequences"; ``python -m benchmarks.packed_vs_padded --packed``); length
buckets keep the padding small anyway. On CUDA, cuDNN runs packed batches at full speed, so
there each direction packs (``StackedLSTM.pack``). The parameters are the same either way: a
checkpoint trained on one device loads on the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

Cell = Literal["fused", "layernorm"]
Pooling = Literal["last", "max", "max_mean"]


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


class LayerNormLSTMLayer(nn.Module):
    """One direction of one layer of ``LayerNormLSTMCell`` steps: a Python loop over time.

    Called like a one-layer ``nn.LSTM(batch_first=True)``: x (B, T, I) -> (outputs (B, T, H), None).
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.cell = LayerNormLSTMCell(input_size, hidden_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        state = (x.new_zeros(x.shape[0], self.cell.hidden_size),) * 2  # (h, c) each (B, H)
        outputs = []
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
            outputs.append(state[0])
        return torch.stack(outputs, 1), None


def reverse_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of ``x`` (B, T, D) within its own length; padding stays at the end."""
    b, steps = x.shape[:2]
    t = torch.arange(steps, device=x.device)
    lengths = lengths.to(x.device).unsqueeze(1)
    index = torch.where(t < lengths, lengths - 1 - t, t)  # (B, T): the step each position reads
    # One row lookup in (B * T, D), whose backward (index_add) is cheaper on CPU than gather's.
    rows = index + steps * torch.arange(b, device=x.device).unsqueeze(1)
    return x.flatten(0, 1).index_select(0, rows.flatten()).view_as(x)


class StackedLSTM(nn.Module):
    """``num_layers`` (bi)LSTM layers over a batch padded at the end, one recurrence per direction.

    Layer ``l``, direction ``d`` is ``self.layers[l][d]``: a one-layer ``nn.LSTM`` (``cell="fused"``)
    or a ``LayerNormLSTMLayer``. Dropout is applied to the outputs of every layer but the last, as in
    ``nn.LSTM``. Outputs at padded positions are left as they come (not zeroed): the caller reads only
    a text's own positions.

    ``pack``: run each ``nn.LSTM`` on packed sequences, which skips the padded steps. ``None`` (the
    default) packs on CUDA only, where cuDNN makes it pay; on CPU it would leave the oneDNN kernel.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool, dropout: float,
                 cell: Cell) -> None:
        super().__init__()
        if cell == "fused":
            def direction(size: int) -> nn.Module:
                return nn.LSTM(size, hidden_size, batch_first=True)
        elif cell == "layernorm":
            def direction(size: int) -> nn.Module:
                return LayerNormLSTMLayer(size, hidden_size)
        else:
            raise ValueError(f"cell must be 'fused' or 'layernorm', not {cell!r}")
        self.directions = 2 if bidirectional else 1
        self.layers = nn.ModuleList(
            nn.ModuleList(direction(input_size if layer == 0 else hidden_size * self.directions)
                          for _ in range(self.directions))
            for layer in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.pack: bool | None = None

    def run(self, rnn: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """One direction of one layer, left to right: x (B, T, I) -> outputs (B, T, H)."""
        pack = x.is_cuda if self.pack is None else self.pack
        if pack and isinstance(rnn, nn.LSTM):
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            return pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=x.shape[1])[0]
        return rnn(x)[0]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x (B, T, I) padded at the end, lengths (B,) -> the last layer's outputs (B, T, directions * H)."""
        for i, layer in enumerate(self.layers):
            if i:
                x = self.dropout(x)
            outputs = [self.run(layer[0], x, lengths)]
            if self.directions == 2:
                backward = self.run(layer[1], reverse_valid(x, lengths), lengths)  # read from the last token
                outputs.append(reverse_valid(backward, lengths))  # back in text order
            x = torch.cat(outputs, -1)  # (B, T, directions * H)
        return x


class LSTMClassifier(nn.Module):
    """Embedding -> ``num_layers`` LSTM layers -> pooled states -> linear.

    ``pooling="last"`` classifies from the final hidden states: the forward direction's at the text's
    last token and the backward direction's at its first; ``pooling="max"`` from the element-wise
    maximum of the last layer's outputs over the text's own positions, which lets a strong word
    anywhere in the text decide, not only what the state at the end remembers (Conneau et al. 2017
    found max pooling best for BiLSTM sentence encoders); ``pooling="max_mean"`` concatenates that
    maximum and the mean over the text's positions (twice the head's input).

    Args:
        vocab_size: Rows of the embedding.
        num_classes: Output logits.
        embedding_dim: Size of a token vector (that of the GloVe file, when one is loaded).
        hidden_size: LSTM state size per direction.
        num_layers: Stacked LSTM layers.
        bidirectional: Also read each text backwards and concatenate both directions.
        dropout: Dropout on the embeddings, between LSTM layers and before the head.
        cell: ``fused`` (``nn.LSTM`` kernels) or ``layernorm`` (``LayerNormLSTMCell`` steps).
        pooling: ``last`` (final hidden states), ``max`` (max over positions of the last layer's outputs)
            or ``max_mean`` (max and mean over positions, concatenated).
        word_dropout: In training, the chance that a token is replaced by ``unknown_id``: the model
            learns to do without any single word and meets unknown words in training as it will in use.
        unknown_id: The token id of unknown words.
        pad_id: The token id of padding: its embedding row stays zero and word dropout leaves it.
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
        word_dropout: float = 0.0,
        unknown_id: int = 1,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if pooling not in ("last", "max", "max_mean"):
            raise ValueError(f"pooling must be 'last', 'max' or 'max_mean', not {pooling!r}")
        self.pooling = pooling
        self.word_dropout, self.unknown_id, self.pad_id = word_dropout, unknown_id, pad_id
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.rnn = StackedLSTM(embedding_dim, hidden_size, num_layers, bidirectional, dropout, cell)
        self.dropout = nn.Dropout(dropout)
        features = hidden_size * self.rnn.directions * (2 if pooling == "max_mean" else 1)
        self.head = nn.Linear(features, num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) padded with ``pad_id``, lengths (B,) >= 1 -> (B, num_classes) logits."""
        lengths = lengths.to(tokens.device)
        if self.training and self.word_dropout > 0:
            dropped = (torch.rand(tokens.shape, device=tokens.device) < self.word_dropout) & (tokens != self.pad_id)
            tokens = tokens.masked_fill(dropped, self.unknown_id)
        outputs = self.rnn(self.dropout(self.embedding(tokens)), lengths)  # (B, T, directions * H)
        if self.pooling == "last":
            hidden = outputs.shape[-1] // self.rnn.directions
            last = outputs[torch.arange(len(tokens), device=tokens.device), lengths - 1]  # (B, directions * H)
            # The forward direction ends at the last token, the backward one at the first.
            pooled = torch.cat([last[:, :hidden], outputs[:, 0, hidden:]], -1)
        else:
            padded = (torch.arange(tokens.shape[1], device=tokens.device) >= lengths.unsqueeze(1)).unsqueeze(-1)
            pooled = outputs.masked_fill(padded, float("-inf")).amax(1)  # (B, directions * H)
            if self.pooling == "max_mean":
                mean = outputs.masked_fill(padded, 0.0).sum(1) / lengths.unsqueeze(1)  # (B, directions * H)
                pooled = torch.cat([pooled, mean], -1)
        return self.head(self.dropout(pooled))

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
