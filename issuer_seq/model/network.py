"""The exported network, factored in two: an event encoder and a query over its states.

A plain nn.Module (no Lightning) taking the named inputs of data/batches.py:

    event encoder     one event's own features -> its state (B, D): sum of per-feature
                      categorical embeddings + linear(numeric) + a learned vector per day of
                      the month (pay cycles step at paydays, which a linear term in the day
                      cannot follow), then residual feed-forward layers. It reads nothing
                      else, so a state can be computed once, when the event happens, and
                      serve every stream and every later query that reads the event.
    stream queries    per stream of features.STREAMS (the card, the issuer, the route, the
                      card at the current merchant): the current attempt's state attends over
                      itself and the stream's K cached states, each plus a term of how the
                      event stands to the current attempt (`pair`: minutes since, same
                      merchant, same payment, a new day since, its amount against the
                      attempt's); only the query token is updated, layer after layer ->
                      (B, D). The current attempt is always a key, so an empty history
                      never yields NaN. Only the route stream's query reads the attempt's
                      route; the others start from the attempt's state without it, so an
                      attempt's candidate routes share their vectors (`route_query`:
                      computed once for all of them).
    history counts    per stream, how many history events of each cause fall in trailing
                      windows (10 min ... all K), overall and at the same merchant, log1p ->
                      linear (B, D), added to the stream's vector. Softmax attention averages
                      and cannot count; velocity, bursts of declines and outages are counts.
    history stats     per stream and cause: the latest event's recency, the largest and the
                      mean amount (B, D), added likewise
    issuer by route   the issuer stream's counts split by each event's route; the attempt's
                      route picks its own, log1p -> linear (B, D), added to the route
                      stream's vector: how this issuer has been answering through this route
    payment so far    the codes of the payment's latest earlier attempt (found by the
                      `same_payment` flags of the card-at-merchant stream), how long ago and
                      whether a new day has begun since (B, D); zeros for a first attempt
    card's latest     the response and advice codes of the card's latest event, wherever it
                      was (B, D): a card reported lost, stolen or closed, or expired, is
                      declined everywhere after, and its next attempt is often weeks later
    approval head     MLP([card, issuer, route, card_merchant, current, payment, card's
                      latest]) -> logit, plus a learned scalar per issuer x route and per
                      route x MCC of the attempt (`route_pairs`), / temperature + shift (B,)
    retry head        MLP([streams..., current, payment, card's latest, decline code,
                      advice code])
                      -> one logit per delay of the grid / retry temperature       (B, G)

The temperatures and the approval's shift are buffers fitted after training
(train/calibrate.py), so export carries them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from issuer_seq import features as F
from issuer_seq.features import SHARED, STREAMS

DAYS_IN_MONTH = 31


def day_onehot(day_of_month: Tensor, days: Tensor) -> Tensor:
    """(...) `day_of_month` inputs ((day - 1) / 30) -> (..., 31) one-hot of the day.

    Written as hat functions max(0, 1 - |30 x - d|) (float arithmetic only, no casts: the
    fp16 export keeps its types); padding (0) reads as the 1st, and its token is masked.
    """
    return torch.relu(1 - torch.abs(day_of_month[..., None] * 30 - days))


class EventEncoder(nn.Module):
    """One event's own features -> its state (..., D): what `observe` computes once per event.

    cat (..., C) int64 ids in features.CATEGORICAL order, num (..., F) float32 in
    features.NUMERIC order. The state reads nothing but the event itself (never the time
    of a later attempt, a merchant compared, or "now"), so it can be computed when the
    event happens and cached; one state serves every stream that reads the event.

        embedding  sum of per-feature categorical embeddings (one table, per-feature
                   offsets) + linear(numeric) + a learned vector per day of the month (pay
                   cycles step at paydays, which a linear term in the day cannot follow)
        mixing     `layers` residual feed-forward layers, pre-norm
    """

    def __init__(
        self, vocab_sizes: Mapping[str, int], d_model: int, d_ff: int, layers: int, dropout: float
    ) -> None:
        super().__init__()
        sizes = [vocab_sizes[f] for f in F.CATEGORICAL]
        offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.cat = nn.Embedding(sum(sizes), d_model)
        self.num = nn.Linear(len(F.NUMERIC), d_model)
        self.day = nn.Linear(DAYS_IN_MONTH, d_model, bias=False)
        self.register_buffer(
            "days", torch.arange(DAYS_IN_MONTH, dtype=torch.float32), persistent=False
        )
        self.ff = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(d_model),
                nn.Linear(d_model, d_ff),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(d_ff, d_model),
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, cat: Tensor, num: Tensor) -> Tensor:
        """The ids may carry more leading dims than the numbers: variants of one event's ids
        (the attempt with and without its route) are encoded with the same numbers, in one
        pass."""
        day = day_onehot(num[..., _DAY_OF_MONTH], self.days)
        out = self.embedded(cat + self.offsets) + self.num(num) + self.day(day)
        for layer in self.ff:
            out = out + layer(out)
        return self.norm(out)

    def embedded(self, ids: Tensor) -> Tensor:
        """(..., C) ids (offsets added) -> the sum of their embeddings (..., D). Training sums
        each event's C embeddings as one bag (`embedding_bag`): no (..., C, D) tensor is
        made, forward or backward, where most of a step's embedding time went; a graph
        looks them up and sums them (ONNX has no bag op). The same function."""
        if not self.training:
            return self.cat(ids).sum(-2)
        summed = EmbeddingSum.apply(ids.reshape(-1, ids.shape[-1]), self.cat.weight)
        return summed.reshape(*ids.shape[:-1], summed.shape[-1])


class EmbeddingSum(torch.autograd.Function):
    """ids (M, C), weight (V, D) -> (M, D): each row's C embeddings summed, as
    `embedding_bag(mode="sum")`, with its weight gradient accumulated column by column (C
    `index_add_` of the whole (M, D) gradient): on the CPU several times faster than
    embedding_bag's backward, which sorts all M x C ids first. The same gradient
    (tests/test_network.py)."""

    @staticmethod
    def forward(ctx: Any, ids: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(ids)
        ctx.rows = weight.shape[0]
        return nn.functional.embedding_bag(ids, weight, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor]:
        (ids,) = ctx.saved_tensors
        weight_grad = grad.new_zeros(ctx.rows, grad.shape[-1])
        for column in ids.unbind(1):
            weight_grad.index_add_(0, column, grad)
        return None, weight_grad


#: positions among features.NUMERIC and features.CATEGORICAL of what a state carries aside
_DAY_OF_MONTH = F.NUMERIC.index("day_of_month")
_LOG_AMOUNT = F.NUMERIC.index("log_amount")
_CAUSE = F.CATEGORICAL.index("cause")
_RESPONSE_CODE = F.CATEGORICAL.index("response_code")
_ADVICE_CODE = F.CATEGORICAL.index("advice_code")
_ISSUER_ID = F.CATEGORICAL.index("issuer")
_MCC = F.CATEGORICAL.index("mcc")
_CARD_MERCHANT = STREAMS.index("card_merchant")  # the stream the payment so far reads
_CARD = STREAMS.index("card")  # the stream whose latest event's codes the heads read
_ISSUER = STREAMS.index("issuer")  # the stream whose answers by route the route's slot reads
_ROUTE_STREAM = STREAMS.index("route")


def packed(x: Mapping[str, Tensor], prefix: str, names: tuple[str, ...]) -> Tensor:
    """Named inputs `<prefix>_<name>` stacked on a last axis, in `names` order."""
    return torch.stack([x[f"{prefix}_{n}"] for n in names], dim=-1)


# -- every stream at once ------------------------------------------------------------------
# Each stream's modules own its parameters and define, one stream at a time, what it
# computes (`StreamQuery`, `HistoryCounts`, `HistoryStats`). The network runs the three
# streams as one computation: their parameters stacked on a leading stream axis N, their
# inputs right-aligned to a common K (`stack_streams`). A served query is then one graph
# node per step instead of three (ONNX Runtime's cost per node is most of a single
# request's time). Training stacks only neighbouring streams of the same window length
# (`equal_window_runs`: the card's and the issuer's 32, then the card at the merchant's 8),
# so no slot is padding there. tests/test_network.py holds them all equal.
#
# `index` (`Picks`), where given, picks the streams whose modules compute each of N' slices,
# a stream more than once where it repeats: `IssuerSeqNet.route_query` runs each candidate
# route's stream as a slice of its own beside the shared streams, in one computation.
class Picks(NamedTuple):
    """The streams whose modules compute each of N' stacked slices: the streams at positions
    `first`, then, where `then` is not None, stream `then` for every slice after them (the
    route graph's candidates: as many as its inputs hold). `index` (N',): all N' positions."""

    first: tuple[int, ...]
    then: int | None
    index: Tensor


def pick(stacked: Tensor, index: Picks | None) -> Tensor:
    """`index`'s slices of streams' parameters `stacked` (N, ...); all of them without one.
    Parameters are shaped before they are picked: a graph then folds the shaping into its
    constants and picks with one node. (Matrices are not picked but multiplied by:
    `matmul_n`.)"""
    return stacked if index is None else stacked.index_select(0, index.index)


def stacked_param(
    modules: list[nn.Module], name: str, ndim: int, index: Picks | None = None
) -> Tensor:
    """The parameter `name` of each module, stacked on a leading stream axis (N, ...) and
    shaped to broadcast against (N, ..., last) inputs of `ndim` dims."""
    w = torch.stack([getattr(m, name) for m in modules])
    return pick(w.reshape(w.shape[0], *(1,) * (ndim - w.dim()), *w.shape[1:]), index)


def matmul_n(x: Tensor, weight: Tensor, index: Picks | None = None) -> Tensor:
    """x (N, ..., in) @ weight (N, in, out) -> (N, ..., out), each stream's slice by its own
    matrix; with `index`, x (N', ..., in), each slice by the matrix of the stream it picks.

    Eager PyTorch runs it as N matrix products over the slices flattened ((N, M, in) @ (N, in,
    out)): broadcast over the middle dims, (N, B, K, in) @ (N, 1, in, out), it would make N x B
    small products of K rows, several times slower in training. A graph being exported keeps
    the broadcast product (no shape arithmetic: fewer nodes for ONNX Runtime).

    Picked matrices are never copied per slice (gathered, they were an eighth of the route
    graph's time on the CPU): the first streams' slices are multiplied by their matrices,
    constants of a graph (their positions are), and every later slice by stream `then`'s
    one matrix, in one product."""
    if index is not None:
        n = len(index.first)
        first = matmul_n(x[:n], weight[list(index.first)])
        if index.then is None:
            return first
        return torch.cat([first, x[n:] @ weight[index.then]])
    if x.dim() <= 3 or torch.compiler.is_exporting():
        return x @ weight.reshape(weight.shape[0], *(1,) * (x.dim() - 3), *weight.shape[1:])
    flat = x.reshape(x.shape[0], -1, x.shape[-1]) @ weight
    return flat.reshape(*x.shape[:-1], weight.shape[-1])


def linear_n(x: Tensor, layers: list[nn.Module], index: Picks | None = None) -> Tensor:
    """Each stream's own nn.Linear on its slice of x (N, ..., in) -> (N, ..., out)."""
    weight = torch.stack([layer.weight for layer in layers]).transpose(1, 2)
    return matmul_n(x, weight, index) + stacked_param(layers, "bias", x.dim(), index)


def layer_norm_n(x: Tensor, norms: list[nn.Module], index: Picks | None = None) -> Tensor:
    """Each stream's own nn.LayerNorm on its slice of x (N, ..., D)."""
    normed = nn.functional.layer_norm(x, x.shape[-1:], eps=norms[0].eps)
    weight = stacked_param(norms, "weight", x.dim(), index)
    return normed * weight + stacked_param(norms, "bias", x.dim(), index)


def stack_streams(tensors: list[Tensor]) -> Tensor:
    """(B, K_s, ...) per stream -> (N, B, K, ...), K the longest, each left-padded with zeros
    (the windows are right-aligned; the padding is masked or counts as no event)."""
    k = tensors[0].shape[1]
    for t in tensors[1:]:
        k = torch.sym_max(k, t.shape[1])  # no guard on the dims' order: they stay dynamic
    pad = [(0, 0) * (t.dim() - 2) + (k - t.shape[1], 0) for t in tensors]
    return torch.stack([nn.functional.pad(t, p) for t, p in zip(tensors, pad, strict=True)])


def equal_window_runs(windows: list[int]) -> list[slice]:
    """Slices of neighbouring streams with the same window length: [32, 32, 8] -> [0:2, 2:3]."""
    runs, start = [], 0
    for i in range(1, len(windows) + 1):
        if i == len(windows) or windows[i] != windows[start]:
            runs.append(slice(start, i))
            start = i
    return runs


#: log1p(minutes) bounds of the pair's recency steps: 10 min, 1 h, 1 day, 7 days
_RECENCY_STEPS = (10.0, 60.0, 1_440.0, 10_080.0)
#: numbers per (current attempt, history event) pair: log minutes since / NEVER, same
#: merchant, same payment, a new (UTC) day begun since, the event's log amount less the
#: attempt's and 1.0 where the event's amount is at least the attempt's, then one step per
#: _RECENCY_STEPS
N_PAIR = 6 + len(_RECENCY_STEPS)


class QueryBlock(nn.Module):
    """Pre-norm layer in which the current attempt's token alone is updated: it attends over
    itself and the stream's (fixed) history tokens, then a feed-forward.

    Attention of one query, written out: per head, the query-key products are summed by a
    (D, H) block one-hot matrix instead of reshaping to heads, so the graph has no shape
    arithmetic (a few matmuls where nn.MultiheadAttention exports ~60 nodes). The weights
    are nn.MultiheadAttention's, and the result is its result.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_m = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=0.0, batch_first=True)
        heads = torch.eye(n_heads).repeat_interleave(d_model // n_heads, dim=0)  # (D, H)
        self.register_buffer("heads", heads, persistent=False)
        self.scale = (d_model // n_heads) ** -0.5
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, q: Tensor, memory: Tensor, pad: Tensor) -> Tensor:
        # q (B, D); memory (B, K, D); pad (B, 1 + K) True where padding
        d = q.shape[-1]
        w, b = self.attn.in_proj_weight, self.attn.in_proj_bias
        h = self.norm_q(q)
        tokens = torch.cat([h[:, None, :], self.norm_m(memory)], dim=1)  # (B, T, D)
        query = nn.functional.linear(h, w[:d], b[:d]) * self.scale  # (B, D)
        key = nn.functional.linear(tokens, w[d : 2 * d], b[d : 2 * d])  # (B, T, D)
        value = nn.functional.linear(tokens, w[2 * d :], b[2 * d :])  # (B, T, D)
        scores = (query[:, None, :] * key) @ self.heads  # (B, T, H)
        scores = scores.masked_fill(pad[..., None], float("-inf"))
        weights = torch.softmax(scores, dim=1) @ self.heads.T  # (B, T, D)
        a = self.attn.out_proj((weights * value).sum(dim=1))  # (B, D)
        q = q + self.drop(a)
        return q + self.drop(self.ff(self.norm2(q)))


class StreamQuery(nn.Module):
    """The current attempt's token attending over one stream's cached event states. (B, D)

    What depends on the pair (the current attempt, a history event) enters here, as an
    additive term of the history token computed from `N_PAIR` numbers; the event states
    themselves are the encoder's, shared by every stream.
    """

    def __init__(
        self, d_model: int, n_heads: int, n_layers: int, d_ff: int, dropout: float
    ) -> None:
        super().__init__()
        self.pair = nn.Linear(N_PAIR, d_model)
        self.layers = nn.ModuleList(
            QueryBlock(d_model, n_heads, d_ff, dropout) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, current: Tensor, states: Tensor, pair: Tensor, length: Tensor) -> Tensor:
        # current (B, D); states (B, K, D) right-aligned; pair (B, K, N_PAIR); length (B,)
        k = states.shape[1]
        memory = states + self.pair(pair)
        offsets = torch.arange(-k, 0, device=states.device)
        pad = offsets[None, :] < -length[:, None]  # (B, K) True where padding
        pad = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1)  # the current token is real
        q = current
        for layer in self.layers:
            q = layer(q, memory, pad)
        return self.norm(q)


def id_table(n_ids: int) -> Tensor:
    """(n, n-1) one-hot rows of a vocabulary's ids (the causes, the routes); id 0 (padding)
    -> all zeros."""
    return torch.eye(n_ids)[:, 1:]


def id_onehot(ids: Tensor, table: Tensor) -> Tensor:
    """(B, K) ids -> (B, K, n-1) one-hot, by lookup in their `id_table` (no Cast in the
    graph: the fp16 export keeps its types)."""
    return nn.functional.embedding(ids, table)


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
        """(..., W+1, C-1) counts: rows the windows then same-merchant, columns cause ids
        1..C-1.

        onehot (..., K, C-1) from `id_onehot`; log_minutes, same_merchant (..., K) float, as
        the inputs carry them.
        """
        # (..., W + 1, K) @ (..., K, C - 1)
        return self.rows(log_minutes, same_merchant).transpose(-1, -2) @ onehot

    def rows(self, log_minutes: Tensor, same_merchant: Tensor) -> Tensor:
        """(..., K, W+1): 1.0 where an event falls in each window (log_minutes <= bound, in
        float arithmetic: no casts), then its same-merchant flag."""
        within = (torch.sign(self.log_bounds - log_minutes[..., None]) + 1).clamp(max=1)
        return torch.cat([within, same_merchant[..., None]], dim=-1)


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
        """(..., 3, C-1): rows recency / NEVER, largest and mean log amount; columns cause ids.

        onehot (..., K, C-1) from `id_onehot`; log_minutes, log_amount (..., K) float.
        """
        # minimum and maximum over K as TopK: ONNX Runtime's shape inference (int8
        # quantization) does not know ReduceMin / ReduceMax of opset 18
        minutes = log_minutes[..., None] * onehot + self.NEVER * (1 - onehot)
        recency = minutes.topk(1, dim=-2, largest=False).values[..., 0, :]
        amount = log_amount[..., None] * onehot
        largest = amount.topk(1, dim=-2).values[..., 0, :]
        mean = amount.sum(dim=-2) / onehot.sum(dim=-2).clamp(min=1)
        return torch.stack([recency / self.NEVER, largest, mean], dim=-2)


def per_head(a: Tensor, b: Tensor, heads: Tensor) -> Tensor:
    """(N, H, M, out): per head h, a (N, M, D) restricted to h's columns (the others
    zeros) @ b (N, D, out); heads (D, H) one-hot."""
    return (a[:, None] * heads.T[None, :, None, :]) @ b[:, None]


def query_blocks_n(
    blocks: list[QueryBlock],
    q: Tensor,
    normed: Tensor,
    pad: Tensor,
    training: bool,
    index: Picks | None = None,
) -> Tensor:
    """`QueryBlock.forward` of each stream's block at once: q (N, B, D), the memory
    layer-normalized without an affine `normed` (N, B, K, D), pad (N, B, K + 1) True where a
    memory slot is padding (the last, the query's own token, never) -> (N, B, D).

    With one query per stream, the tokens' keys and values are never formed. A head's score
    of a token t, query . (t @ w_k + b_k) over the head's dims, is t . (w_k @ the query
    restricted to the head), its `probe`, plus query . b_k, which is the same for every token
    and cancels in the softmax. The query is itself a linear map of the query's own token, so
    the H probes are one product of that token with a (D, H D) matrix of the parameters (per
    head h, w_q's columns of h @ w_k's rows of h). The heads' weighted sums of values,
    sum_t w_th (t @ w_v + b_v), are (sum_t w_th t) @ w_v + b_v (the weights sum to 1), and
    the output projection of head h's dims of that is (sum_t w_th t) @ (w_v restricted to
    h's columns @ w_o): one product of the H pooled tokens with a (H D, D) matrix of the
    parameters. So the T tokens meet H vectors per query, in two products, and each block is
    a few graph nodes (ONNX Runtime's cost per node is most of a served query's time).
    """
    first = blocks[0]
    d, p, heads = q.shape[-1], first.drop.p, first.heads  # heads (D, H) one-hot
    n_heads = heads.shape[1]
    w = torch.stack([b.attn.in_proj_weight for b in blocks]).transpose(1, 2)  # (N, D, 3D)
    bias = torch.stack([b.attn.in_proj_bias for b in blocks])[:, None]  # (N, 1, 3D)
    w_q, b_q = w[..., :d] * first.scale, bias[..., :d] * first.scale
    w_k_t = w[..., d : 2 * d].transpose(1, 2)  # (N, D, D)
    # per head h, the query restricted to h's dims @ w_k_t, from the token: (N, D, H D)
    w_probe = per_head(w_q, w_k_t, heads).transpose(1, 2).flatten(2)
    b_probe = pick(per_head(b_q, w_k_t, heads).transpose(1, 2).flatten(2), index)  # (N, 1, H D)
    w_v, b_v = w[..., 2 * d :], bias[..., 2 * d :]
    w_o = torch.stack([b.attn.out_proj.weight for b in blocks]).transpose(1, 2)  # (N, D, D)
    b_o = torch.stack([b.attn.out_proj.bias for b in blocks])[:, None]  # (N, 1, D)
    # per head h, w_v's columns of h @ w_o's rows of h, stacked: (N, H D, D)
    w_vo = per_head(w_v, w_o, heads).flatten(1, 2)
    b_vo = pick(b_v @ w_o + b_o, index)
    gamma = stacked_param([b.norm_m for b in blocks], "weight", 4, index)  # (N, 1, 1, D)
    beta = stacked_param([b.norm_m for b in blocks], "bias", 4, index)
    h = layer_norm_n(q, [b.norm_q for b in blocks], index)  # the query's own token
    probe = (matmul_n(h, w_probe, index) + b_probe).unflatten(-1, (n_heads, d))  # (N, B, H, D)
    tokens = torch.cat([normed * gamma + beta, h[:, :, None]], dim=2)  # (N, B, K + 1, D)
    scores = probe @ tokens.transpose(-1, -2)  # (N, B, H, K + 1)
    weights = torch.softmax(scores.masked_fill(pad[:, :, None], float("-inf")), dim=-1)
    pooled = weights @ tokens  # (N, B, H, D)
    a = matmul_n(pooled.flatten(-2), w_vo, index) + b_vo
    q = q + nn.functional.dropout(a, p, training)
    hidden = nn.functional.gelu(
        linear_n(
            layer_norm_n(q, [b.norm2 for b in blocks], index), [b.ff[0] for b in blocks], index
        )
    )
    hidden = nn.functional.dropout(hidden, first.ff[2].p, training)
    out = linear_n(hidden, [b.ff[3] for b in blocks], index)
    return q + nn.functional.dropout(out, p, training)


def stream_queries_n(
    queries: list[StreamQuery],
    tokens: Tensor,
    states: Tensor,
    pair: Tensor,
    length: Tensor,
    training: bool,
    index: Picks | None = None,
) -> Tensor:
    """`StreamQuery.forward` of each stream at once: tokens (N, B, D) the current attempt's
    token each stream's query starts from, states (N, B, K, D) right-aligned, pair
    (N, B, K, N_PAIR), length (N, B) -> (N, B, D)."""
    k = states.shape[2]
    memory = states + linear_n(pair, [q.pair for q in queries], index)
    # every block's memory norm, before its own affine (`query_blocks_n` folds that in)
    normed = nn.functional.layer_norm(
        memory, memory.shape[-1:], eps=queries[0].layers[0].norm_m.eps
    )
    # the K slots, then the query's own token (offset 0: never padding)
    offsets = torch.arange(-k, 1, device=states.device)
    pad = offsets < -length[..., None]  # (N, B, K + 1) True where padding
    q = tokens
    for blocks in zip(*(query.layers for query in queries), strict=True):
        q = query_blocks_n(list(blocks), q, normed, pad, training, index)
    return layer_norm_n(q, [query.norm for query in queries], index)


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
        codes: Tensor,
        day: Tensor,
        today: Tensor,
    ) -> Tensor:
        # same_payment, log_minutes (B, K) float; codes (B, K, D) each event's response and
        # advice code embeddings, summed; day (B, K, 31) the events' day_onehot, today
        # (B, 31) the scored attempt's
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
            codes.gather(1, latest[..., None].expand(-1, -1, codes.shape[-1]))[:, 0]
            + self.time(torch.cat([minutes / never, past], dim=-1))
            + self.new_day(today) * new_day
        )
        return out * has


class IssuerSeqNet(nn.Module):
    """Approval logit and retry-curve logits from the histories of the card, the issuer,
    the route and the card at the merchant.

    `use_card` False drops both card streams (the card's and the card-at-merchant's);
    `use_issuer` False the issuer's, `use_route` False the route's: the stream's vector is then
    zeros (ablations).
    """

    #: what the saved weights compute, beyond their shapes: a run records it, and a run of
    #: another version is refused on loading (train/trained_run.py). 2: only the route
    #: stream's query reads the attempt's route. 3: the heads read the card's latest codes.
    #: 4: a linear term of those codes is added to the approval logit (`approval_logit`).
    #: 5: the pair term compares the event's amount with the attempt's (`pair`). 6: in every
    #: stream but the route's (`compares_amounts`). 7: the route's vector adds the issuer's
    #: recent answers through the attempt's route (`issuer_by_route`, `through_issuer`).
    #: 8: the approval logit adds a learned scalar per issuer x route and route x MCC
    #: (`route_pairs`).
    VERSION = 8
    #: the calibration's buffers, fitted after training (train/calibrate.py)
    CALIBRATION = ("approval_temperature", "approval_shift", "retry_temperature")

    def __init__(
        self,
        vocab_sizes: Mapping[str, int],
        n_delays: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        d_ff: int = 128,
        dropout: float = 0.1,
        event_layers: int = 0,
        use_card: bool = True,
        use_issuer: bool = True,
        use_route: bool = True,
        n_fused: int = 0,
    ) -> None:
        super().__init__()
        routeless = torch.ones(len(F.CATEGORICAL), dtype=torch.long)
        routeless[F.ROUTE] = 0
        self.register_buffer("routeless", routeless, persistent=False)
        self.register_buffer("shared_streams", torch.tensor(SHARED), persistent=False)
        # which of the attempt's two encodings (0 with its route, 1 without) each stream's
        # query starts from (`current`)
        rows = [0 if i == _ROUTE_STREAM else 1 for i in range(len(STREAMS))]
        self.register_buffer("token_rows", torch.tensor(rows), persistent=False)
        self.use = {
            "card": use_card,
            "issuer": use_issuer,
            "route": use_route,
            "card_merchant": use_card,
        }
        self.d_model = d_model
        self.events = EventEncoder(vocab_sizes, d_model, d_ff, event_layers, dropout)
        self.queries = nn.ModuleDict(
            {s: StreamQuery(d_model, n_heads, n_layers, d_ff, dropout) for s in STREAMS}
        )
        self.counts = nn.ModuleDict(
            {s: HistoryCounts(vocab_sizes["cause"], d_model) for s in STREAMS}
        )
        self.stats = nn.ModuleDict(
            {s: HistoryStats(vocab_sizes["cause"], d_model) for s in STREAMS}
        )
        self.register_buffer("causes", id_table(vocab_sizes["cause"]), persistent=False)
        self.register_buffer("routes", id_table(vocab_sizes["route"]), persistent=False)
        # the issuer's answers through the attempt's route: HistoryCounts' table of the
        # issuer stream's events through that route, added to the route stream's vector
        # (zeros where the issuer's or the route's stream is ablated)
        self.issuer_route = nn.Linear(
            (len(HistoryCounts.WINDOW_MINUTES) + 1) * (vocab_sizes["cause"] - 1), d_model
        )
        route_slot = torch.zeros(len(STREAMS), 1, 1)
        route_slot[_ROUTE_STREAM] = float(use_issuer and use_route)
        self.register_buffer("route_slot", route_slot, persistent=False)
        used = torch.tensor([float(self.use[s]) for s in STREAMS])
        self.register_buffer("used", used, persistent=False)
        # the amounts compared in every stream but the route's (other cards' attempts)
        compares = torch.ones(len(STREAMS))
        compares[_ROUTE_STREAM] = 0.0
        self.register_buffer("compares_amounts", compares, persistent=False)
        self.register_buffer(
            "days", torch.arange(DAYS_IN_MONTH, dtype=torch.float32), persistent=False
        )
        steps = torch.log1p(torch.tensor(_RECENCY_STEPS))  # compared in log space
        self.register_buffer("recency_steps", steps, persistent=False)
        rel_scale = torch.tensor([1 / HistoryStats.NEVER, 1.0, 1.0])  # features.RELATIVE's
        self.register_buffer("rel_scale", rel_scale, persistent=False)
        self.payment = PaymentSoFar(d_model)
        joint = (len(STREAMS) + 3) * d_model  # streams, current, payment so far, card's latest
        self.n_fused = n_fused
        if n_fused:
            # the trees' aggregates (baselines/fused.py), standardized by the training
            # split's moments (`set_fused_moments`), then one layer into the joint vector
            self.register_buffer("fused_mean", torch.zeros(n_fused))
            self.register_buffer("fused_scale", torch.ones(n_fused))
            self.fused = nn.Sequential(nn.Linear(n_fused, d_model), nn.GELU())
            joint += d_model
        self.approval_head = nn.Sequential(
            nn.Linear(joint, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, 1)
        )
        # the card's latest answer straight to the approval logit (`approval_logit`), from
        # zero; the LightningModule trains it at a higher rate (`latest_answer_lr_scale`)
        self.latest_answer = nn.Linear(d_model, 1)
        nn.init.zeros_(self.latest_answer.weight)
        nn.init.zeros_(self.latest_answer.bias)
        # what lasts of a route for an issuer (its cross-border rules against the acquirer's
        # country) and for a kind of merchant (the acquirer's risk filters): a scalar of the
        # approval logit per pair, from zero (`route_pairs`)
        self.n_routes = vocab_sizes["route"]
        self.issuer_route_bias = nn.Embedding(vocab_sizes["issuer"] * self.n_routes, 1)
        self.route_mcc_bias = nn.Embedding(vocab_sizes["mcc"] * self.n_routes, 1)
        nn.init.zeros_(self.issuer_route_bias.weight)
        nn.init.zeros_(self.route_mcc_bias.weight)
        self.decline_code = nn.Embedding(vocab_sizes["response_code"], d_model, padding_idx=F.PAD)
        self.decline_advice = nn.Embedding(vocab_sizes["advice_code"], d_model, padding_idx=F.PAD)
        self.retry_head = nn.Sequential(
            nn.Linear(joint + d_model, d_ff),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_ff, n_delays),
        )
        # the approval's calibration, Platt scaling fitted on validation (train/calibrate.py):
        # p = sigmoid(logit / approval_temperature + approval_shift)
        self.register_buffer("approval_temperature", torch.ones(()))
        self.register_buffer("approval_shift", torch.zeros(()))
        self.register_buffer("retry_temperature", torch.ones(()))
        self.layout = self.state_layout()

    # -- the event encoder's output: one cached vector per event -------------------------
    def state_layout(self) -> dict[str, tuple[int, int]]:
        """The parts of a cached event state, as [start, stop) column ranges:

        - `hidden`: the encoder's state (D)
        - `codes`: the event's response and advice code embeddings, summed (D), what the
          payment so far reads of the payment's latest attempt
        - `cause`: the one-hot of its cause (C - 1), what the counts and stats read
        - `route`: the one-hot of its route (R - 1), what `issuer_by_route` splits by
        - `log_amount` (1) and `day` (31), the one-hot of its day of the month
        """
        d, c, r = self.d_model, self.causes.shape[1], self.routes.shape[1]
        sizes = {
            "hidden": d,
            "codes": d,
            "cause": c,
            "route": r,
            "log_amount": 1,
            "day": DAYS_IN_MONTH,
        }
        out, start = {}, 0
        for name, size in sizes.items():
            out[name] = (start, start + size)
            start += size
        return out

    def state_size(self) -> int:
        return self.state_layout()["day"][1]

    def state(self, cat: Tensor, num: Tensor) -> Tensor:
        """Events -> their cached states (..., S): cat (..., C) int64 ids in
        features.CATEGORICAL order, num (..., F) float32 in features.NUMERIC order. Reads the
        event alone; what serving's `observe` computes once per event (the event graph)."""
        return torch.cat(list(self.state_parts(cat, num).values()), dim=-1)

    def state_parts(self, cat: Tensor, num: Tensor) -> dict[str, Tensor]:
        """`state`'s parts, by the names of `state_layout`, in its order. Training reads
        them apart: slicing parts out of one state tensor costs a zero-filled gradient of the
        whole state per part in the backward pass, for parts (the one-hots) that need none."""
        return {
            "hidden": self.events(cat, num),
            "codes": self.decline_code(cat[..., _RESPONSE_CODE])
            + self.decline_advice(cat[..., _ADVICE_CODE]),
            "cause": id_onehot(cat[..., _CAUSE], self.causes),
            "route": id_onehot(cat[..., F.ROUTE], self.routes),
            "log_amount": num[..., _LOG_AMOUNT : _LOG_AMOUNT + 1],
            "day": day_onehot(num[..., _DAY_OF_MONTH], self.days),
        }

    def parts(self, states: Tensor) -> dict[str, Tensor]:
        """Cached states (..., S) -> their parts, as `state_parts` gives them."""
        return {name: states[..., start:stop] for name, (start, stop) in self.layout.items()}

    def pair(
        self,
        rel: Tensor,
        day: Tensor,
        today: Tensor,
        amount: Tensor,
        log_amount: Tensor,
        compares: Tensor,
    ) -> Tensor:
        """(..., B, K, N_PAIR): how each history event stands to the current attempt.

        rel (..., B, K, 3) the relative features (features.RELATIVE); day (..., B, K, 31) the
        events' `day_onehot`, today (B, 31) the current attempt's; log_amount (..., B, K) the
        events' log amounts, amount (B,) the current attempt's. Float arithmetic only (no
        casts: the fp16 export keeps its types).

        The amounts compared: whether a card has been approved (or declined for funds, or
        over a limit) at this amount or above is a comparison of two events, which the
        event states alone, each encoded without the other, do not make. `compares` (...)
        1.0 for a stream that compares them, 0.0 where the two numbers are zeros: the route's
        stream, other cards' attempts, whose amounts say nothing of this card's (comparing
        them cost routing, docs/training.md).
        """
        minutes = rel[..., :1]  # (..., B, K, 1)
        within = (torch.sign(self.recency_steps - minutes) + 1).clamp(max=1)
        # the same date (the one-hots' dot product) and less than a day ago
        same_day = (day * today[:, None, :]).sum(-1, keepdim=True) * within[..., 2:3]
        # the event's amount against the attempt's: log ratio, and 1.0 where at least as large
        keep = compares[..., None, None, None]
        above = (log_amount[..., None] - amount[:, None, None]) * keep
        at_least = (torch.sign(above) + 1).clamp(max=1) * keep
        # columns: log minutes since / NEVER, same merchant, same payment (rel, scaled), a new
        # day begun since, the amounts compared, the recency steps
        return torch.cat([rel * self.rel_scale, 1 - same_day, above, at_least, within], dim=-1)

    # -- the query: one pass over the cached states of each stream ------------------------
    def query(
        self,
        cur_cat: Tensor,
        cur_num: Tensor,
        states: Tensor,
        rel: Tensor,
        length: Tensor,
        decline_response_code: Tensor,
        decline_advice_code: Tensor,
        fused: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Uncalibrated (approval (B,), retry (B, G)) logits of the current attempts.

        cur_cat (B, C), cur_num (B, F): the attempt (its outcome features NONE). The streams
        of features.STREAMS, stacked on a first axis N and right-aligned to one K (`stack_streams`):
        states (N, B, K, S) the cached states of each stream's last events, padding slots
        zeros (or the state of a padding event, ids and values 0: the same); rel
        (N, B, K, 3) features.RELATIVE (padding zeros); length (N, B); fused (B, n_fused)
        the attempts' `fused_inputs`, when the network reads them.
        """
        cur, tokens, today = self.current(cur_cat, cur_num)
        parts = self.parts(states)
        streams = self.stream_vectors(
            tokens, today, cur_num[..., _LOG_AMOUNT], parts, rel, length, slice(None)
        )
        by_route = self.issuer_by_route(
            parts["cause"][_ISSUER], parts["route"][_ISSUER], rel[_ISSUER]
        )
        streams = streams + self.route_slot * self.through_issuer(by_route, cur_cat)[None]
        return self.heads(
            cur_cat,
            cur,
            today,
            streams,
            {name: part[_CARD_MERCHANT] for name, part in parts.items()},
            rel[_CARD_MERCHANT],
            parts["codes"][_CARD],
            decline_response_code,
            decline_advice_code,
            fused,
        )

    def current(self, cur_cat: Tensor, cur_num: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Of the attempt's own state, what the query reads: its vector (B, D), the token
        each stream's query starts from (N, B, D) and its day (B, 31).

        The route stream's query starts from the attempt's vector, the other streams' from
        the vector of the attempt without its route (route id 0). So the card's, the
        issuer's and the card at the merchant's vectors do not depend on the route the
        attempt is sent through, and an attempt's candidate routes share them; the route
        enters through the route stream and the heads."""
        both = self.events(torch.stack([cur_cat, cur_cat * self.routeless]), cur_num)
        today = day_onehot(cur_num[..., _DAY_OF_MONTH], self.days)
        return both[0], both.index_select(0, self.token_rows), today

    def stream_vectors(
        self,
        tokens: Tensor,
        today: Tensor,
        amount: Tensor,
        states: Mapping[str, Tensor],
        rel: Tensor,
        length: Tensor,
        which: slice | Picks,
    ) -> Tensor:
        """(n, B, D): the vectors of the streams STREAMS[which] (`which` a slice), or of the
        n streams `which` picks (a stream more than once where it repeats), their inputs
        stacked as `query`'s (n, B, K, ...), the states by part (`state_parts`), the tokens
        their queries start from (n, B, D; `current`), the attempts' day (B, 31) and log
        amount (B,), which the pair term compares: the query over the states, plus the
        counts and stats."""
        if isinstance(which, slice):
            names, index, at = STREAMS[which], None, which
        else:
            names, index, at = STREAMS, which, which.index
        minutes, onehot, log_amount = rel[..., 0], states["cause"], states["log_amount"][..., 0]
        encoded = stream_queries_n(
            [self.queries[s] for s in names],
            tokens,
            states["hidden"],
            self.pair(rel, states["day"], today, amount, log_amount, self.compares_amounts[at]),
            length,
            self.training,
            index,
        )
        counts, stats = self.counts[STREAMS[0]], self.stats[STREAMS[0]]  # same for every stream
        count_table = torch.log1p(counts.table(onehot, minutes, rel[..., 1]))
        stat_table = stats.table(onehot, minutes, log_amount)
        return (
            encoded
            + linear_n(count_table.flatten(-2), [self.counts[s].proj for s in names], index)
            + linear_n(stat_table.flatten(-2), [self.stats[s].proj for s in names], index)
        ) * self.used[at, None, None]  # an ablated stream's vector is zeros

    def issuer_by_route(self, cause: Tensor, route: Tensor, rel: Tensor) -> Tensor:
        """(B, R - 1, W + 1, C - 1): the issuer stream's history counts (`HistoryCounts.table`)
        split by the route each event went through. cause (B, K, C - 1) and route (B, K,
        R - 1): that stream's states' one-hot parts; rel (B, K, 3) its relative features.

        An issuer that declines through one acquirer route for days (its risk rules, a BIN
        range) shows in its answers through that route only; the issuer's query, which every
        candidate route shares, summarizes all its routes. Counted per route, what a route
        stands for with this issuer is one table each candidate picks (`through_issuer`)."""
        rows = self.counts["issuer"].rows(rel[..., 0], rel[..., 1])  # (B, K, W + 1)
        # matrix products (ONNX Runtime's Einsum is several times slower at these sizes)
        by = (route[..., :, None] * rows[..., None, :]).flatten(-2)  # (B, K, R' (W + 1))
        table = by.transpose(-1, -2) @ cause  # (B, R' (W + 1), C - 1)
        return table.unflatten(-2, (route.shape[-1], rows.shape[-1]))

    def through_issuer(self, by_route: Tensor, cur_cat: Tensor) -> Tensor:
        """(B, D): the counts of `issuer_by_route` (B, R - 1, W + 1, C - 1) through the route
        of each row of cur_cat (B, C), log1p -> linear, as `HistoryCounts`."""
        mine = id_onehot(cur_cat[..., F.ROUTE], self.routes)  # (B, R - 1)
        table = mine[:, None, :] @ by_route.flatten(2)  # (B, 1, (W + 1) (C - 1))
        return self.issuer_route(torch.log1p(table).flatten(1))

    def heads(
        self,
        cur_cat: Tensor,
        cur: Tensor,
        today: Tensor,
        streams: Tensor,
        at: Mapping[str, Tensor],
        near: Tensor,
        card_codes: Tensor,
        decline_response_code: Tensor,
        decline_advice_code: Tensor,
        fused: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Both heads' logits from the streams' vectors (N, B, D), the attempt's vector and
        day, the card-at-merchant stream's states by part `at` ((B, K, ...) each) and
        relative features `near` (B, K, 3), which the payment so far reads, and the card
        stream's `codes` part (B, K, D), whose latest the heads read."""
        past = self.own_past(cur, today, at, near, card_codes)
        z = self.joint(cur, streams, past, fused)
        approval = self.approval_logit(z, past, cur_cat)
        decline = self.decline_code(decline_response_code) + self.decline_advice(
            decline_advice_code
        )
        retry = self.retry_head(torch.cat([z, decline], dim=-1))
        return approval, retry

    def own_past(
        self,
        cur: Tensor,
        today: Tensor,
        at: Mapping[str, Tensor],
        near: Tensor,
        card_codes: Tensor,
    ) -> Tensor:
        """(B, 2 D): `PaymentSoFar` of the card-at-merchant stream (`heads`), then the codes
        of the card's latest event (`card_codes` (B, K, D), the card stream's `codes` part:
        right-aligned, so its last slot; a padding slot's codes are zeros), each zeros when
        the card streams are ablated."""
        if not self.use["card_merchant"]:
            return torch.cat([torch.zeros_like(cur), torch.zeros_like(cur)], dim=-1)
        payment = self.payment(near[..., 2], near[..., 0], at["codes"], at["day"], today)
        return torch.cat([payment, card_codes[:, -1]], dim=-1)

    def approval_logit(self, z: Tensor, past: Tensor, cur_cat: Tensor) -> Tensor:
        """(B,) the approval head's logit of the heads' input z plus a linear term of the
        card's latest codes (the last D of `past`, `own_past`): a direct path, so that the
        rare answers after which a card is declined everywhere (lost, stolen, expired: a few
        dozen in a training split) move the logit as far as they should; plus the attempt's
        `route_pairs` (cur_cat (B, C))."""
        latest = past[..., -self.latest_answer.in_features :]
        head = self.approval_head(z) + self.latest_answer(latest) + self.route_pairs(cur_cat)
        return head.squeeze(-1)

    def route_pairs(self, cur_cat: Tensor) -> Tensor:
        """(B, 1): a learned scalar of the attempt's issuer x route plus one of its route x
        MCC (cur_cat (B, C)). What a route means for an issuer, or for a kind of merchant,
        lasts (the issuer's sensitivity to cross-border acquiring, the acquirer's risk filters
        by MCC): the streams see it only as far as their last events reach, and the heads
        otherwise meet the three ids only as one sum of embeddings. Every route's scalars are
        learned from the attempts logged through it (the logging policy explores), so the
        candidates of a route choice differ by them too (a "wide" term beside the network)."""
        route = cur_cat[..., F.ROUTE]
        issuer = cur_cat[..., _ISSUER_ID] * self.n_routes + route
        mcc = cur_cat[..., _MCC] * self.n_routes + route
        return self.issuer_route_bias(issuer) + self.route_mcc_bias(mcc)

    def joint(self, cur: Tensor, streams: Tensor, past: Tensor, fused: Tensor | None) -> Tensor:
        """The heads' input (B, (N + 3 [+ 1]) D): the streams' vectors (N, B, D), the
        attempt's vector, its own past (`own_past`: the payment so far, the card's latest
        codes) and, for a fused network, its aggregates."""
        parts = [streams.transpose(0, 1).flatten(1), cur, past]
        if self.n_fused:
            if fused is None:
                raise ValueError(f"this network reads the {self.n_fused} fused aggregates")
            parts.append(self.fused((fused - self.fused_mean) / self.fused_scale))
        return torch.cat(parts, dim=-1)

    def shared_vectors(
        self, cur_cat: Tensor, cur_num: Tensor, states: Tensor, rel: Tensor, length: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """What B attempts' candidate routes share: the vectors of the streams that do not
        read the route (features.SHARED_STREAMS), (N - 1, B, D), the attempt's own past
        (`own_past`, B, 2 D) and the issuer's answers by route (`issuer_by_route`). states
        (N - 1, B, K, S), rel (N - 1, B, K, 3), length (N - 1, B): those streams' inputs,
        stacked as `query`'s. `through_route` adds each candidate's part."""
        token = self.events(cur_cat * self.routeless, cur_num)  # (B, D)
        today = day_onehot(cur_num[..., _DAY_OF_MONTH], self.days)
        parts = self.parts(states)
        vectors = self.stream_vectors(
            token[None].expand(len(SHARED), -1, -1),
            today,
            cur_num[..., _LOG_AMOUNT],
            parts,
            rel,
            length,
            Picks(SHARED, None, self.shared_streams),
        )
        m, i = SHARED.index(_CARD_MERCHANT), SHARED.index(_ISSUER)
        at = {k: v[m] for k, v in parts.items()}
        past = self.own_past(token, today, at, rel[m], parts["codes"][SHARED.index(_CARD)])
        by_route = self.issuer_by_route(parts["cause"][i], parts["route"][i], rel[i])
        return vectors, past, by_route

    def through_route(
        self,
        cur_cat: Tensor,
        cur_num: Tensor,
        shared: Tensor,
        past: Tensor,
        by_route: Tensor,
        route_states: Tensor,
        route_rel: Tensor,
        route_length: Tensor,
        fused: Tensor | None = None,
    ) -> Tensor:
        """Uncalibrated approval logits (B,) of B attempts, each through the route of its
        `cur_cat` row: `query`'s approval logits, with the shared part from `shared_vectors`
        (`shared`, `past`, `by_route`) and the route stream's own inputs route_states (B, K,
        S), route_rel (B, K, 3), route_length (B,)."""
        cur = self.events(cur_cat, cur_num)
        today = day_onehot(cur_num[..., _DAY_OF_MONTH], self.days)
        route = self.stream_vectors(
            cur[None],
            today,
            cur_num[..., _LOG_AMOUNT],
            self.parts(route_states[None]),
            route_rel[None],
            route_length[None],
            slice(_ROUTE_STREAM, _ROUTE_STREAM + 1),
        )
        route = route + self.route_slot[_ROUTE_STREAM] * self.through_issuer(by_route, cur_cat)
        streams = torch.cat([shared[:_ROUTE_STREAM], route, shared[_ROUTE_STREAM:]])
        return self.approval_logit(self.joint(cur, streams, past, fused), past, cur_cat)

    def route_query(
        self,
        cur_cat: Tensor,
        cur_num: Tensor,
        states: Tensor,
        rel: Tensor,
        length: Tensor,
        route_states: Tensor,
        route_rel: Tensor,
        route_length: Tensor,
        fused: Tensor | None = None,
    ) -> Tensor:
        """Uncalibrated approval logits (R,) of one attempt sent through R candidate routes:
        `query`'s approval logits of R copies of the attempt, each with its route and its
        route stream, with the shared streams computed once.

        cur_cat (R, C): the attempt through each route (rows differ in the route id only);
        cur_num (R, F). The streams the candidates share (features.SHARED_STREAMS), stacked
        as `query`'s inputs with a batch of 1: states (N - 1, 1, K, S), rel (N - 1, 1, K, 3),
        length (N - 1, 1). Each candidate's route stream, as a stream of its own with a batch
        of 1: route_states (R, 1, K, S), route_rel (R, 1, K, 3), route_length (R, 1). fused
        (R, n_fused), when read.

        The candidates' route streams join the shared streams on the stream axis, each
        computed by the route stream's modules (`stream_vectors`' `Picks`): one computation
        of N - 1 + R slices at a batch of 1, where a batch of R copies computes N R.
        """
        r, n = cur_cat.shape[0], len(SHARED)
        today = day_onehot(cur_num[:1, _DAY_OF_MONTH], self.days)  # (1, 31): one attempt
        # the attempt through each route (R rows), then without a route (1 row), in one pass
        both = self.events(
            torch.cat([cur_cat, cur_cat[:1] * self.routeless]), torch.cat([cur_num, cur_num[:1]])
        )
        cur, token = both[:r], both[r:]  # (R, D), (1, D)
        index = Picks(
            SHARED,
            _ROUTE_STREAM,
            torch.cat([self.shared_streams, torch.zeros_like(route_length[:, 0]) + _ROUTE_STREAM]),
        )
        parts = self.parts(torch.cat([states, route_states]))
        vectors = self.stream_vectors(
            torch.cat([token.expand(n, 1, -1), cur[:, None, :]]),
            today,
            cur_num[:1, _LOG_AMOUNT],
            parts,
            torch.cat([rel, route_rel]),
            torch.cat([length, route_length]),
            index,
        )  # (N - 1 + R, 1, D)
        shared = vectors[:n].expand(-1, r, -1)  # (N - 1, R, D)
        i = SHARED.index(_ISSUER)
        by_route = self.issuer_by_route(parts["cause"][i], parts["route"][i], rel[i])
        issuer = self.through_issuer(by_route.expand(r, -1, -1, -1), cur_cat)  # (R, D)
        route = vectors[n:].transpose(0, 1) + self.route_slot[_ROUTE_STREAM] * issuer  # (1, R, D)
        streams = torch.cat([shared[:_ROUTE_STREAM], route, shared[_ROUTE_STREAM:]])
        m = SHARED.index(_CARD_MERCHANT)
        at = {name: part[m] for name, part in parts.items()}
        card_codes = parts["codes"][SHARED.index(_CARD)]
        past = self.own_past(token, today, at, rel[m], card_codes).expand(r, -1)
        return self.approval_logit(self.joint(cur, streams, past, fused), past, cur_cat)

    def logits(self, x: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Uncalibrated (approval (B,), retry (B, G)) logits from the named inputs of
        data/batches.py: every event's state, then the query. What training optimizes.

        A graph (export) and evaluation run the streams stacked to the longest window, as the
        served query does: one node per step. Training runs each run of neighbouring streams
        with the same window as one computation at that window, so the card-at-merchant
        stream's 8 slots are not padded to the card's 32 (a quarter of the slots, all
        attention and projections); tests/test_network.py holds the two equal."""
        cat = packed(x, "cur", F.CATEGORICAL)
        num = packed(x, "cur", F.NUMERIC)
        events = [(packed(x, s, F.CATEGORICAL), packed(x, s, F.NUMERIC)) for s in STREAMS]
        rel = [packed(x, s, F.RELATIVE) for s in STREAMS]
        length = torch.stack([x[f"{s}_length"] for s in STREAMS])
        code, advice, fused = x["decline_response_code"], x["decline_advice_code"], x.get("fused")
        if not self.training:
            states = stack_streams([self.state(*event) for event in events])
            return self.query(cat, num, states, stack_streams(rel), length, code, advice, fused)
        cur, tokens, today = self.current(cat, num)
        vectors, at, card_codes = [], {}, torch.zeros(())
        issuer = (torch.zeros(()), torch.zeros(()))  # its cause and route one-hots
        for run in equal_window_runs([r.shape[1] for r in rel]):
            # the run's events stacked before they are encoded (ids and numbers, not states)
            parts = self.state_parts(
                torch.stack([c for c, _ in events[run]]), torch.stack([n for _, n in events[run]])
            )
            vectors.append(
                self.stream_vectors(
                    tokens[run],
                    today,
                    num[..., _LOG_AMOUNT],
                    parts,
                    torch.stack(rel[run]),
                    length[run],
                    run,
                )
            )
            if run.start <= _CARD_MERCHANT < run.stop:
                at = {name: part[_CARD_MERCHANT - run.start] for name, part in parts.items()}
            if run.start <= _CARD < run.stop:
                card_codes = parts["codes"][_CARD - run.start]
            if run.start <= _ISSUER < run.stop:
                issuer = (parts["cause"][_ISSUER - run.start], parts["route"][_ISSUER - run.start])
        m = _CARD_MERCHANT
        by_route = self.issuer_by_route(*issuer, rel[_ISSUER])
        streams = torch.cat(vectors) + self.route_slot * self.through_issuer(by_route, cat)[None]
        return self.heads(cat, cur, today, streams, at, rel[m], card_codes, code, advice, fused)

    def set_fused_moments(self, fused: Tensor) -> None:
        """Standardize the fused input by the mean and deviation of `fused` (N, n_fused), the
        training split's (a constant column keeps scale 1)."""
        std = fused.std(0)
        self.fused_mean.copy_(fused.mean(0))
        self.fused_scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Calibrated probabilities: p_approve (B,) and the retry curve (B, G)."""
        return self.calibrated(*self.logits(x))

    def calibrated(self, approval: Tensor, retry: Tensor) -> tuple[Tensor, Tensor]:
        """Logits -> calibrated probabilities p_approve (B,) and the retry curve (B, G)."""
        return self.p_approve(approval), torch.sigmoid(retry / self.retry_temperature)

    def p_approve(self, approval: Tensor) -> Tensor:
        """Approval logits -> calibrated P(approved), the same shape."""
        return torch.sigmoid(approval / self.approval_temperature + self.approval_shift)
