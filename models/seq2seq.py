"""RNN encoder-decoder with attention (Bahdanau et al. 2014), for ``python -m apps.translate fit``.

Shapes: B sentences, S source tokens, T target tokens, H hidden units, E embedding size, V vocabulary;
in a decoder step, N = B x K rows, K hypotheses per sentence (beam search's, or one).

- ``Encoder``: bidirectional GRU or LSTM over packed sequences, so padding never enters the
  recurrence; every source position gets a ``2H`` annotation.
- ``AdditiveAttention`` (Bahdanau) scores ``v . tanh(W q + U k)``; ``MultiplicativeAttention``
  (Luong's "general") scores ``q . W k``. Both set padded positions to -inf before the softmax.
- ``Decoder``: one RNN cell step at a time, fed the previous token and the context; with
  ``attention="none"`` the context is the encoder's final state at every step, the fixed-vector
  RNN encoder-decoder of Cho et al. 2014 that attention was invented to beat on long sentences.
  The annotations go through the decoder's context weights once per sentence, not at every step.
- ``Seq2Seq``: teacher forcing with a ratio, batched greedy decoding and batched beam search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

RNNS = {"gru": nn.GRU, "lstm": nn.LSTM}
CELLS = {"gru": nn.GRUCell, "lstm": nn.LSTMCell}
# A decoder state: h (B, H) for a GRU, (h, c) for an LSTM.
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def hidden(state: State) -> torch.Tensor:
    """The hidden state h (B, H) of a GRU's or an LSTM's state."""
    return state[0] if isinstance(state, tuple) else state


def select(state: State, rows: torch.Tensor) -> State:
    """The state of the given batch rows (beam search reorders hypotheses)."""
    return tuple(s[rows] for s in state) if isinstance(state, tuple) else state[rows]


@dataclass
class Memory:
    """What the decoder reads at every step, one row per sentence: its beam hypotheses share it."""

    values: torch.Tensor  # (B, S, G + E) each annotation through the decoder's context weights; (B, 1, G + E) without attention
    projected: torch.Tensor | None  # (B, S, A) annotations already through the attention's key layer
    mask: torch.Tensor  # (B, S) True at real tokens

    def select(self, rows: torch.Tensor) -> Memory:
        """The given sentences only (a boolean mask or indices): beam search drops settled ones."""
        return Memory(self.values[rows], None if self.projected is None else self.projected[rows], self.mask[rows])


class Encoder(nn.Module):
    """Bidirectional RNN over the source tokens.

    Args:
        vocab_size: Source vocabulary size.
        embedding_dim: Token embedding size.
        hidden_size: Units per direction.
        rnn: ``gru`` or ``lstm``.
        dropout: Dropout on the embeddings.
        pad_id: Padding token id.
    """

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, rnn: str, dropout: float, pad_id: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.rnn = RNNS[rnn](embedding_dim, hidden_size, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, source: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Annotations (B, S, 2H), final state (B, 2H) and, for an LSTM, final cell (B, 2H)."""
        embedded = self.dropout(self.embedding(source))  # (B, S, E)
        # Packed: the backward direction starts at each sentence's last real token, not at padding.
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, state = self.rnn(packed)
        keys, _ = pad_packed_sequence(outputs, batch_first=True, total_length=source.shape[1])
        h, c = state if isinstance(state, tuple) else (state, None)  # (2, B, H): forward, backward
        final = torch.cat([h[0], h[1]], dim=-1)
        cell = None if c is None else torch.cat([c[0], c[1]], dim=-1)
        return keys, final, cell


class AdditiveAttention(nn.Module):
    """Bahdanau's score ``v . tanh(W q + U k)``.

    Args:
        query_size: Size of the decoder state that asks.
        key_size: Size of an encoder annotation.
        attention_size: Size of the hidden layer of the score.
    """

    def __init__(self, query_size: int, key_size: int, attention_size: int) -> None:
        super().__init__()
        self.query = nn.Linear(query_size, attention_size, bias=False)
        self.key = nn.Linear(key_size, attention_size)
        self.v = nn.Linear(attention_size, 1, bias=False)

    def project(self, keys: torch.Tensor) -> torch.Tensor:
        """``U k`` for every position, once per sentence instead of once per step: (B, S, A)."""
        return self.key(keys)

    def scores(self, query: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        """Scores (B, K, S) of K queries per sentence (B, K, H) over its projected keys (B, S, A).

        The (B, K, S, A) sum is the largest tensor of a decoding step, so tanh overwrites it rather
        than allocating another, and ``v`` is applied as the vector it is: a matrix-vector product
        rather than a one-column ``Linear``. The scores are those of ``self.v``, up to rounding.
        """
        hidden = (projected.unsqueeze(1) + self.query(query).unsqueeze(2)).tanh_()  # (B, K, S, A)
        return hidden @ self.v.weight[0]


class MultiplicativeAttention(nn.Module):
    """Luong's "general" score ``q . W k``.

    Args:
        query_size: Size of the decoder state that asks.
        key_size: Size of an encoder annotation.
    """

    def __init__(self, query_size: int, key_size: int) -> None:
        super().__init__()
        self.key = nn.Linear(key_size, query_size, bias=False)

    def project(self, keys: torch.Tensor) -> torch.Tensor:
        return self.key(keys)  # (B, S, H)

    def scores(self, query: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        """Scores (B, K, S) of K queries per sentence (B, K, H) over its projected keys (B, S, H)."""
        return torch.bmm(query, projected.transpose(1, 2))


def attention_weights(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax of scores (B, K, S) over the real positions only (mask (B, S)): exactly 0 at padding."""
    return scores.masked_fill(~mask.unsqueeze(1), float("-inf")).softmax(-1)


def gru_step(gates: torch.Tensor, h: torch.Tensor, cell: nn.GRUCell) -> torch.Tensor:
    """``cell(x, h)`` given its input gates ``W_ih x + b_ih`` (B, 3H), in PyTorch's order r, z, n."""
    r_x, z_x, n_x = gates.chunk(3, -1)
    r_h, z_h, n_h = F.linear(h, cell.weight_hh, cell.bias_hh).chunk(3, -1)
    r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
    n = torch.tanh(n_x + r * n_h)
    return (1 - z) * n + z * h


def lstm_step(gates: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], cell: nn.LSTMCell
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``cell(x, (h, c))`` given its input gates ``W_ih x + b_ih`` (B, 4H), in PyTorch's order i, f, g, o."""
    h, c = state
    i, f, g, o = (gates + F.linear(h, cell.weight_hh, cell.bias_hh)).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


STEPS = {"gru": gru_step, "lstm": lstm_step}


class Decoder(nn.Module):
    """One target token per step: ``s_t = RNN([y_{t-1}; c_t], s_{t-1})``, logits from ``[s_t; c_t; y_{t-1}]``
    through a narrow tanh layer.

    The context ``c_t`` attends with the previous state ``s_{t-1}`` (Bahdanau); both scores use the
    same wiring, so ``attention`` changes only how positions are scored.

    The context enters a step only through linear layers (the cell's input gates and the deep output)
    and is a weighted sum of the annotations, ``c_t = sum_s a_ts k_s``; so ``W c_t = sum_s a_ts (W k_s)``.
    ``memory`` multiplies every annotation by those layers' context columns ``W`` once per sentence,
    and each step only weighs S of these products instead of multiplying its 2H-wide context by ``W``
    (``tests/test_translate.py`` counts the multiply-adds saved). The cell's gates are therefore written
    out (``gru_step``, ``lstm_step``); the parameters are still those of ``self.cell`` and
    ``self.pre_output``, and the results theirs, up to rounding. G is the cell's gate width: 3H for a
    GRU, 4H for an LSTM.

    Args:
        vocab_size: Target vocabulary size.
        embedding_dim: Token embedding size.
        hidden_size: Decoder state size.
        context_size: Size of an encoder annotation (2 x encoder hidden size).
        rnn: ``gru`` or ``lstm``.
        attention: ``additive``, ``multiplicative`` or ``none``.
        dropout: Dropout on the embeddings and before the output layer.
        pad_id: Padding token id.
    """

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, context_size: int, rnn: str,
                 attention: str, dropout: float, pad_id: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        if attention == "additive":
            self.attention: nn.Module | None = AdditiveAttention(hidden_size, context_size, hidden_size)
        elif attention == "multiplicative":
            self.attention = MultiplicativeAttention(hidden_size, context_size)
        else:
            self.attention = None
        self.cell = CELLS[rnn](embedding_dim + context_size, hidden_size)  # input [y_{t-1}; c_t]
        self.step = STEPS[rnn]
        # Bahdanau's "deep output": [s_t; c_t; y_{t-1}] through a layer as narrow as an embedding
        # before the V-wide one.
        self.pre_output = nn.Linear(hidden_size + context_size + embedding_dim, embedding_dim)
        self.out = nn.Linear(embedding_dim, vocab_size)
        self.dropout = nn.Dropout(dropout)

    def context_weight(self) -> torch.Tensor:
        """The columns of the cell's input layer and of the deep output that multiply ``c_t``: (G + E, 2H)."""
        e, h = self.embedding.embedding_dim, self.cell.hidden_size
        return torch.cat([self.cell.weight_ih[:, e:], self.pre_output.weight[:, h:-e]])

    def memory(self, keys: torch.Tensor, mask: torch.Tensor, summary: torch.Tensor) -> Memory:
        """What every step reads, from the annotations (B, S, 2H), their mask and the final states (B, 2H)."""
        if self.attention is None:  # the same context, the final states, at every step: one position
            return Memory(F.linear(summary, self.context_weight()).unsqueeze(1), None, mask)
        return Memory(F.linear(keys, self.context_weight()), self.attention.project(keys), mask)

    def forward(self, token: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """Logits (N, V) for the token after ``token`` (N,), the new state, attention weights (N, S) or None.

        Rows are hypotheses, ``k = N / B`` in a row for each of the memory's B sentences.
        """
        e, gates_size = self.embedding.embedding_dim, len(self.cell.weight_ih)
        b = len(memory.mask)
        k = len(token) // b
        embedded = self.dropout(self.embedding(token))  # (N, E)
        h = hidden(state)  # (N, H)
        if self.attention is None:
            weights, from_context = None, memory.values.expand(b, k, -1)
        else:
            weights = attention_weights(self.attention.scores(h.view(b, k, -1), memory.projected), memory.mask)
            from_context = torch.bmm(weights, memory.values)  # (B, K, S) @ (B, S, G + E): W c_t
            weights = weights.flatten(0, 1)  # (N, S)
        to_gates, to_output = from_context.reshape(b * k, -1).split([gates_size, e], -1)  # (N, G), (N, E)
        gates = F.linear(embedded, self.cell.weight_ih[:, :e], self.cell.bias_ih) + to_gates  # W_ih [y; c] + b_ih
        state = self.step(gates, state, self.cell)
        h = hidden(state)
        w = self.pre_output.weight  # columns: s_t, c_t, y_{t-1}
        deep = F.linear(h, w[:, : h.shape[1]], self.pre_output.bias) + to_output + F.linear(embedded, w[:, -e:])
        logits = self.out(self.dropout(torch.tanh(deep)))
        return logits, state, weights


class Seq2Seq(nn.Module):
    """Encoder, decoder and the decoding loops.

    Args:
        source_vocab_size: Source vocabulary size.
        target_vocab_size: Target vocabulary size.
        embedding_dim: Token embedding size (source and target).
        hidden_size: Encoder units per direction, and decoder state size.
        rnn: ``gru`` or ``lstm``, encoder and decoder.
        attention: ``additive`` (Bahdanau), ``multiplicative`` (Luong) or ``none`` (fixed context).
        dropout: Dropout on embeddings and before the output layer.
        pad_id: Padding token id (both vocabularies).
        bos_id: Begin-of-sentence id: the first decoder input.
        eos_id: End-of-sentence id: decoding stops after it.
    """

    def __init__(
        self,
        source_vocab_size: int,
        target_vocab_size: int,
        embedding_dim: int = 128,
        hidden_size: int = 256,
        rnn: Literal["gru", "lstm"] = "gru",
        attention: Literal["additive", "multiplicative", "none"] = "additive",
        dropout: float = 0.1,
        pad_id: int = 0,
        bos_id: int = 2,
        eos_id: int = 3,
    ) -> None:
        super().__init__()
        if rnn not in RNNS or attention not in ("additive", "multiplicative", "none"):
            raise ValueError(f"unknown rnn {rnn!r} or attention {attention!r}")
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.encoder = Encoder(source_vocab_size, embedding_dim, hidden_size, rnn, dropout, pad_id)
        self.decoder = Decoder(target_vocab_size, embedding_dim, hidden_size, 2 * hidden_size, rnn, attention, dropout, pad_id)
        # The decoder's first state from the encoder's final states (Bahdanau: from the backward one;
        # both directions here, so the no-attention baseline starts from the whole sentence).
        self.bridge = nn.Linear(2 * hidden_size, hidden_size)
        self.bridge_cell = nn.Linear(2 * hidden_size, hidden_size) if rnn == "lstm" else None

    def encode(self, source: torch.Tensor, lengths: torch.Tensor) -> tuple[Memory, State]:
        keys, final, cell = self.encoder(source, lengths)
        mask = torch.arange(source.shape[1], device=source.device) < lengths.to(source.device).unsqueeze(1)  # (B, S)
        state: State = torch.tanh(self.bridge(final))  # (B, H)
        if self.bridge_cell is not None:
            state = (state, torch.tanh(self.bridge_cell(cell)))
        return self.decoder.memory(keys, mask, final), state

    def forward(self, source: torch.Tensor, lengths: torch.Tensor, target_in: torch.Tensor,
                teacher_forcing: float = 1.0) -> torch.Tensor:
        """Logits (B, T, V) for ``target_in`` (B, T) = ``[BOS] y_1 ... y_{T-1}``.

        At each step a sentence is fed the true previous token with probability ``teacher_forcing``,
        else its own prediction (scheduled sampling), so it learns to recover from its mistakes.
        """
        memory, state = self.encode(source, lengths)
        token, steps = target_in[:, 0], []
        for t in range(target_in.shape[1]):
            logits, state, _ = self.decoder(token, state, memory)
            steps.append(logits)
            if t + 1 < target_in.shape[1]:
                token = target_in[:, t + 1]
                if teacher_forcing < 1.0:
                    own = logits.detach().argmax(-1)
                    token = torch.where(torch.rand(token.shape, device=token.device) < teacher_forcing, token, own)
        return torch.stack(steps, 1)

    @torch.no_grad()
    def greedy(self, source: torch.Tensor, lengths: torch.Tensor, max_length: int = 64
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The most likely next token at each step, for the whole batch at once.

        Returns tokens (B, L) ending in ``[EOS]`` then padding, their log-probability (B,) and the
        attention weights (B, L, S) (zeros without attention).
        """
        memory, state = self.encode(source, lengths)
        b = source.shape[0]
        token = torch.full((b,), self.bos_id, dtype=torch.long, device=source.device)
        done = torch.zeros(b, dtype=torch.bool, device=source.device)
        score = torch.zeros(b, device=source.device)
        tokens, weights = [], []
        for _ in range(max_length):
            logits, state, attention = self.decoder(token, state, memory)
            logp = logits.float().log_softmax(-1)  # (B, V)
            token = logp.argmax(-1)
            score += torch.where(done, 0.0, logp.gather(1, token[:, None]).squeeze(1))
            token = token.masked_fill(done, self.pad_id)
            tokens.append(token)
            weights.append(torch.zeros_like(memory.mask, dtype=logp.dtype) if attention is None else attention)
            done |= token == self.eos_id
            if done.all():
                break
        return torch.stack(tokens, 1), score, torch.stack(weights, 1)

    @torch.no_grad()
    def beam_search(self, source: torch.Tensor, lengths: torch.Tensor, beam_size: int = 4, max_length: int = 64,
                    length_penalty: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
        """The best of ``beam_size`` hypotheses per sentence, all sentences of the batch in one loop.

        Hypotheses are ranked by log-probability while searching; a finished one (it produced
        ``[EOS]``) keeps its score and is extended only by padding at no cost. A sentence is settled
        once all its hypotheses have finished, and leaves the batch: the loop computes only the
        sentences still searching, so one long translation does not keep the whole batch busy. Its
        hypotheses are then divided by the GNMT length penalty ``((5 + length) / 6) ** length_penalty``,
        so longer translations are not lost to shorter ones merely for having more factors below one.
        With ``beam_size=1`` this is exactly ``greedy``.

        Returns tokens (B, L) ending in ``[EOS]`` then padding, and their log-probability (B,).
        """
        b, k, device = source.shape[0], beam_size, source.device
        memory, state = self.encode(source, lengths)
        # Rows are hypotheses, `width` per sentence still searching, sentence by sentence: one ([BOS])
        # before the first step, k from then on. The memory keeps one row per sentence still searching.
        sentence = torch.arange(b, device=device)  # the sentence of each group of rows
        scores = torch.zeros(b, 1, device=device)
        token = torch.full((b,), self.bos_id, dtype=torch.long, device=device)
        done = torch.zeros(b, dtype=torch.bool, device=device)
        length = torch.zeros(b, device=device)
        history = torch.empty(b, 0, dtype=torch.long, device=device)
        group = torch.arange(b, device=device).unsqueeze(1)  # (B, 1)
        settled: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (sentences, tokens, log-probs)
        for step in range(max_length):
            logits, state, _ = self.decoder(token, state, memory)
            logp = logits.float().log_softmax(-1)  # (N*K, V)
            n, width, vocab = len(sentence), scores.shape[1], logp.shape[-1]
            if done.any():  # a finished hypothesis continues with padding only, at log-probability 0
                logp[done] = torch.where(torch.arange(vocab, device=device) == self.pad_id, 0.0, float("-inf"))
            candidates = (scores.reshape(-1, 1) + logp).reshape(n, width * vocab)
            scores, index = candidates.topk(k, dim=1)  # (N, K)
            rows = (group[:n] * width + index // vocab).reshape(-1)  # (N*K,) the hypothesis each one extends
            token = (index % vocab).reshape(-1)
            history = torch.cat([history[rows], token.unsqueeze(1)], 1)
            length = length[rows] + (~done[rows]).float()
            done = done[rows] | (token == self.eos_id)
            state = select(state, rows)
            over = done.reshape(n, k).all(1) | (step == max_length - 1)  # the sentences settled now
            if over.any():
                over_rows = over.repeat_interleave(k)
                penalty = ((5.0 + length[over_rows].reshape(-1, k)) / 6.0) ** length_penalty
                best = (scores[over] / penalty).argmax(1)
                settled.append((sentence[over], history[over_rows][group[: len(best)].squeeze(1) * k + best],
                                scores[over].gather(1, best[:, None]).squeeze(1)))
                if over.all():
                    break
                keep, keep_rows = ~over, ~over_rows
                sentence, scores = sentence[keep], scores[keep]
                token, done, length, history = token[keep_rows], done[keep_rows], length[keep_rows], history[keep_rows]
                state, memory = select(state, keep_rows), memory.select(keep)
        longest = max(tokens.shape[1] for _, tokens, _ in settled)
        out = torch.full((b, longest), self.pad_id, dtype=torch.long, device=device)
        logprob = torch.empty(b, device=device)
        for which, tokens, score in settled:
            out[which, : tokens.shape[1]] = tokens
            logprob[which] = score
        return out, logprob
