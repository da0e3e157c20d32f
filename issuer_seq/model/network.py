"""The exported network: event embeddings, three history-stream encoders, two heads.

A plain nn.Module (no Lightning) taking the named inputs of data/batches.py:

    event embedding   sum of per-feature categorical embeddings + linear(numeric) + a
                      learned vector per day of the month (pay cycles step at paydays, which
                      a linear term in the day cannot follow) (+ linear(relative) for
                      history events) + a token-type embedding
    stream encoders   per stream of features.STREAMS (the card, the issuer, the card at the
                      current merchant): [current attempt, history_1..K] -> transformer with a
                      padding mask -> the current attempt's output vector (B, D). The current
                      attempt is always a token, so an empty history never yields NaN.
    history counts    per stream, how many history events of each cause fall in trailing
                      windows (10 min ... all K), overall and at the same merchant, log1p ->
                      linear (B, D), added to the stream's vector. Softmax attention averages
                      and cannot count; velocity, bursts of declines and outages are counts.
    payment so far    the codes of the payment's latest earlier attempt (found by the
                      `same_payment` flags of the card-at-merchant stream), how long ago and
                      whether a new day has begun since (B, D); zeros for a first attempt
    approval head     MLP([card, issuer, card_merchant, current, payment]) -> logit /
                      temperature (B,)
    retry head        MLP([streams..., current, payment, decline code, advice code])
                      -> one logit per delay of the grid / retry temperature       (B, G)

Temperatures are buffers fitted after training (train/calibrate.py), so export carries
them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from issuer_seq import features as F
from issuer_seq.features import STREAMS

_TOKEN_CURRENT = 0  # history events of stream i have token type i + 1


DAYS_IN_MONTH = 31


def day_onehot(day_of_month: Tensor, days: Tensor) -> Tensor:
    """(...) `day_of_month` inputs ((day - 1) / 30) -> (..., 31) one-hot of the day.

    Written as hat functions max(0, 1 - |30 x - d|) (float arithmetic only, no casts: the
    fp16 export keeps its types); padding (0) reads as the 1st, and its token is masked.
    """
    return torch.relu(1 - torch.abs(day_of_month[..., None] * 30 - days))


class EventEmbedding(nn.Module):
    """Named per-event features -> (..., D)."""

    def __init__(self, vocab_sizes: Mapping[str, int], d_model: int) -> None:
        super().__init__()
        self.cat = nn.ModuleDict(
            {f: nn.Embedding(vocab_sizes[f], d_model, padding_idx=F.PAD) for f in F.CATEGORICAL}
        )
        self.num = nn.Linear(len(F.NUMERIC), d_model)
        self.day = nn.Linear(DAYS_IN_MONTH, d_model, bias=False)
        self.rel = nn.Linear(len(F.RELATIVE), d_model)
        self.token_type = nn.Embedding(1 + len(STREAMS), d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Mapping[str, Tensor], prefix: str, token_type: int, day: Tensor) -> Tensor:
        """`day`: the events' `day_onehot` (..., 31)."""
        out = self.num(torch.stack([x[f"{prefix}_{f}"] for f in F.NUMERIC], dim=-1))
        out = out + self.day(day)
        for f, emb in self.cat.items():
            out = out + emb(x[f"{prefix}_{f}"])
        if prefix != "cur":
            out = out + self.rel(torch.stack([x[f"{prefix}_{f}"] for f in F.RELATIVE], dim=-1))
        out = out + self.token_type.weight[token_type]
        return self.norm(out)


class Block(nn.Module):
    """Pre-norm transformer layer; with `query_only` only the current token is updated.

    In the last layer only the current token's output is used, so computing attention and
    the feed-forward for that token alone gives the same result at a fraction of the cost
    (1 x T attention instead of T x T).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, query_only: bool):
        super().__init__()
        self.query_only = query_only
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=0.0, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        # x (B, T, D); pad (B, T) True where padding
        h = self.norm1(x)
        q = h[:, :1] if self.query_only else h  # (B, 1 or T, D)
        a, _ = self.attn(q, h, h, key_padding_mask=pad, need_weights=False)
        y = (x[:, :1] if self.query_only else x) + self.drop(a)
        return y + self.drop(self.ff(self.norm2(y)))


def cause_table(n_causes: int) -> Tensor:
    """(C, C-1) one-hot rows of the cause ids; id 0 (padding) -> all zeros."""
    return torch.eye(n_causes)[:, 1:]


def cause_onehot(cause: Tensor, table: Tensor) -> Tensor:
    """(B, K) cause ids -> (B, K, C-1) one-hot, by lookup in `cause_table` (no Cast in the
    graph: the fp16 export keeps its types)."""
    return nn.functional.embedding(cause, table)


class HistoryCounts(nn.Module):
    """Counts of a stream's history events by cause in trailing windows -> (B, D).

    Computed from the same inputs the encoder reads (cause ids, log minutes since, same
    merchant), so nothing changes on the serving path. Padding has cause id 0 and is never
    counted; the special ids (OOV, NONE) count as their own columns.
    """

    WINDOW_MINUTES = (10.0, 60.0, 1_440.0, 10_080.0, float("inf"))

    def __init__(self, n_causes: int, d_model: int) -> None:
        super().__init__()
        bounds = torch.log1p(torch.tensor(self.WINDOW_MINUTES))  # compared in log space
        self.register_buffer("log_bounds", bounds, persistent=False)
        n_cols = (len(self.WINDOW_MINUTES) + 1) * (n_causes - 1)  # windows + same merchant
        self.proj = nn.Linear(n_cols, d_model)

    def forward(self, onehot: Tensor, log_minutes: Tensor, same_merchant: Tensor) -> Tensor:
        return self.proj(torch.log1p(self.table(onehot, log_minutes, same_merchant)).flatten(1))

    def table(self, onehot: Tensor, log_minutes: Tensor, same_merchant: Tensor) -> Tensor:
        """(B, W+1, C-1) counts: rows the windows then same-merchant, columns cause ids 1..C-1.

        onehot (B, K, C-1) from `cause_onehot`; log_minutes, same_merchant (B, K) float, as
        the inputs carry them.
        """
        # 1.0 where log_minutes <= bound, else 0.0, in float arithmetic (no casts)
        within = (torch.sign(self.log_bounds - log_minutes[..., None]) + 1).clamp(max=1)
        within = torch.cat([within, same_merchant[..., None]], dim=-1)  # (B, K, W+1)
        return torch.einsum("bkw,bkc->bwc", within, onehot)


class HistoryStats(nn.Module):
    """Per cause: how recent a stream's latest event, its largest and its mean amount -> (B, D).

    A minimum and a maximum are what softmax attention approximates worst (the time since the
    card's last funds decline, the largest amount it had approved), so they are computed
    exactly, from the inputs the encoder reads. A cause without events reads as recency
    NEVER and amounts 0 (log amounts are >= 0).
    """

    NEVER = 16.0  # log1p(minutes) beyond any history (~17 years)

    def __init__(self, n_causes: int, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * (n_causes - 1), d_model)

    def forward(self, onehot: Tensor, log_minutes: Tensor, log_amount: Tensor) -> Tensor:
        return self.proj(self.table(onehot, log_minutes, log_amount).flatten(1))

    def table(self, onehot: Tensor, log_minutes: Tensor, log_amount: Tensor) -> Tensor:
        """(B, 3, C-1): rows recency / NEVER, largest and mean log amount; columns cause ids.

        onehot (B, K, C-1) from `cause_onehot`; log_minutes, log_amount (B, K) float.
        """
        # minimum and maximum over K as TopK: ONNX Runtime's shape inference (int8
        # quantization) does not know ReduceMin / ReduceMax of opset 18
        minutes = log_minutes[..., None] * onehot + self.NEVER * (1 - onehot)
        recency = minutes.topk(1, dim=1, largest=False).values[:, 0]
        amount = log_amount[..., None] * onehot
        largest = amount.topk(1, dim=1).values[:, 0]
        mean = amount.sum(dim=1) / onehot.sum(dim=1).clamp(min=1)
        return torch.stack([recency / self.NEVER, largest, mean], dim=1)


class PaymentSoFar(nn.Module):
    """The scored attempt's payment so far -> (B, D): the response and advice codes of its
    latest earlier attempt, how long ago that was and, when a new (UTC) day has begun since,
    a learned vector of the new day; zeros for a first attempt.

    A retry is answered with its decline's cause still in force (a funds decline retried
    minutes later almost always fails again, one retried after payday mostly passes), so
    the approval of a retry hangs on exactly this pair, decline and elapsed time: the
    question the retry head answers from the decline's side. Read from the card-at-merchant
    stream (a payment's attempts share the card and the merchant) by its `same_payment`
    flags; the codes go through the retry head's decline embeddings, shared. Funds arrive
    with a new day (paydays), so a funds decline retried an hour later across midnight is a
    different question from one retried an hour later the same day.
    """

    #: elapsed-time steps, minutes: the default delay grid's points
    STEP_MINUTES = (5.0, 30.0, 120.0, 360.0, 1_440.0, 2_880.0, 5_760.0, 10_080.0)

    def __init__(self, d_model: int) -> None:
        super().__init__()
        steps = torch.log1p(torch.tensor(self.STEP_MINUTES))  # compared in log space
        self.register_buffer("log_steps", steps, persistent=False)
        self.time = nn.Linear(1 + len(self.STEP_MINUTES), d_model)
        self.new_day = nn.Linear(DAYS_IN_MONTH, d_model, bias=False)

    def forward(
        self,
        same_payment: Tensor,
        log_minutes: Tensor,
        response_code: Tensor,
        advice_code: Tensor,
        day: Tensor,
        today: Tensor,
        code_embedding: nn.Embedding,
        advice_embedding: nn.Embedding,
    ) -> Tensor:
        # same_payment, log_minutes (B, K) float; codes (B, K) int64; day (B, K, 31) the
        # events' day_onehot, today (B, 31) the scored attempt's
        never = HistoryStats.NEVER
        # the latest same-payment event: the most recent, as HistoryStats finds recency
        top = (log_minutes * same_payment + never * (1 - same_payment)).topk(1, largest=False)
        latest = top.indices  # (B, 1)
        has = same_payment.topk(1).values  # (B, 1): 1.0 when there is one
        minutes = top.values * has  # (B, 1)
        # 1.0 from each step on, in float arithmetic (no casts), as HistoryCounts does
        past = (torch.sign(minutes - self.log_steps) + 1).clamp(max=1)  # (B, S)
        then = day.gather(1, latest[..., None].expand(-1, -1, DAYS_IN_MONTH))[:, 0]  # (B, 31)
        new_day = 1 - (today * then).sum(-1, keepdim=True)  # (B, 1): 1.0 on another day
        out = (
            code_embedding(response_code.gather(1, latest)[:, 0])
            + advice_embedding(advice_code.gather(1, latest)[:, 0])
            + self.time(torch.cat([minutes / never, past], dim=-1))
            + self.new_day(today) * new_day
        )
        return out * has


class StreamEncoder(nn.Module):
    """[current, history] -> transformer -> the current token's output. (B, D)"""

    def __init__(
        self, d_model: int, n_heads: int, n_layers: int, d_ff: int, dropout: float
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            Block(d_model, n_heads, d_ff, dropout, query_only=i == n_layers - 1)
            for i in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, current: Tensor, history: Tensor, length: Tensor) -> Tensor:
        # current (B, D); history (B, K, D) right-aligned; length (B,)
        k = history.shape[1]
        x = torch.cat([current[:, None, :], history], dim=1)  # (B, 1+K, D)
        offsets = torch.arange(-k, 0, device=history.device)
        pad = offsets[None, :] < -length[:, None]  # (B, K) True where padding
        pad = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1)  # the current token is real
        for layer in self.layers:
            x = layer(x, pad)
        return self.norm(x[:, 0])  # (B, D)


class IssuerSeqNet(nn.Module):
    """Approval logit and retry-curve logits from a card's and an issuer's histories.

    `use_card` False drops both card streams (the card's and the card-at-merchant's);
    `use_issuer` False the issuer's: the stream's vector is then zeros (ablations).
    """

    def __init__(
        self,
        vocab_sizes: Mapping[str, int],
        n_delays: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        d_ff: int = 128,
        dropout: float = 0.1,
        use_card: bool = True,
        use_issuer: bool = True,
    ) -> None:
        super().__init__()
        self.use = {"card": use_card, "issuer": use_issuer, "card_merchant": use_card}
        self.embed = EventEmbedding(vocab_sizes, d_model)
        self.encoders = nn.ModuleDict(
            {s: StreamEncoder(d_model, n_heads, n_layers, d_ff, dropout) for s in STREAMS}
        )
        self.counts = nn.ModuleDict(
            {s: HistoryCounts(vocab_sizes["cause"], d_model) for s in STREAMS}
        )
        self.stats = nn.ModuleDict(
            {s: HistoryStats(vocab_sizes["cause"], d_model) for s in STREAMS}
        )
        self.register_buffer("causes", cause_table(vocab_sizes["cause"]), persistent=False)
        self.register_buffer(
            "days", torch.arange(DAYS_IN_MONTH, dtype=torch.float32), persistent=False
        )
        self.payment = PaymentSoFar(d_model)
        joint = (len(STREAMS) + 2) * d_model  # streams, current, payment so far
        self.approval_head = nn.Sequential(
            nn.Linear(joint, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, 1)
        )
        self.decline_code = nn.Embedding(vocab_sizes["response_code"], d_model, padding_idx=F.PAD)
        self.decline_advice = nn.Embedding(vocab_sizes["advice_code"], d_model, padding_idx=F.PAD)
        self.retry_head = nn.Sequential(
            nn.Linear(joint + d_model, d_ff),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_ff, n_delays),
        )
        self.register_buffer("approval_temperature", torch.ones(()))
        self.register_buffer("retry_temperature", torch.ones(()))

    def encode(self, x: Mapping[str, Tensor]) -> Tensor:
        """The joint representation [streams..., current, payment so far]. (B, (S+2) D)"""
        days = {
            p: day_onehot(x[f"{p}_day_of_month"], self.days)
            for p in ("cur", *STREAMS)
            if p == "cur" or self.use[p]  # an ablated stream's days are never read
        }
        current = self.embed(x, "cur", _TOKEN_CURRENT, days["cur"])  # (B, D)
        parts = []
        for i, s in enumerate(STREAMS):
            if self.use[s]:
                history = self.embed(x, s, 1 + i, days[s])  # (B, K, D)
                encoded = self.encoders[s](current, history, x[f"{s}_length"])
                onehot = cause_onehot(x[f"{s}_cause"], self.causes)  # once for both
                minutes = x[f"{s}_log_minutes_since"]
                counts = self.counts[s](onehot, minutes, x[f"{s}_same_merchant"])
                stats = self.stats[s](onehot, minutes, x[f"{s}_log_amount"])
                parts.append(encoded + counts + stats)
            else:
                parts.append(torch.zeros_like(current))
        if self.use["card_merchant"]:
            s = "card_merchant"
            payment = self.payment(
                x[f"{s}_same_payment"],
                x[f"{s}_log_minutes_since"],
                x[f"{s}_response_code"],
                x[f"{s}_advice_code"],
                days[s],
                days["cur"],
                self.decline_code,
                self.decline_advice,
            )
        else:
            payment = torch.zeros_like(current)
        return torch.cat([*parts, current, payment], dim=-1)

    def logits(self, x: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Uncalibrated (approval (B,), retry (B, G)) logits: what training optimizes."""
        z = self.encode(x)
        approval = self.approval_head(z).squeeze(-1)
        decline = self.decline_code(x["decline_response_code"]) + self.decline_advice(
            x["decline_advice_code"]
        )
        retry = self.retry_head(torch.cat([z, decline], dim=-1))
        return approval, retry

    def forward(self, x: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Calibrated probabilities: p_approve (B,) and the retry curve (B, G)."""
        approval, retry = self.logits(x)
        p_approve = torch.sigmoid(approval / self.approval_temperature)
        p_retry = torch.sigmoid(retry / self.retry_temperature)
        return p_approve, p_retry
