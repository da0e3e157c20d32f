"""The factored network: what training computes is what serving computes from cached states."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from issuer_seq import features as F
from issuer_seq.data.batches import DeviceStore
from issuer_seq.data.store import TRAIN, EventStore, StoreConfig, build_store
from issuer_seq.features import STREAMS
from issuer_seq.model.network import (
    N_PAIR,
    IssuerSeqNet,
    equal_window_runs,
    packed,
    stack_streams,
)
from issuer_seq.schema import load_log


@pytest.fixture(scope="module")
def store(sim_dir: Path) -> EventStore:
    return build_store(
        load_log(sim_dir), StoreConfig(k_card=8, k_issuer=8, k_route=8, k_card_merchant=4)
    )


@pytest.fixture(scope="module")
def net(store: EventStore) -> IssuerSeqNet:
    torch.manual_seed(0)
    net = IssuerSeqNet(store.vocab.sizes(), n_delays=8, d_model=16, n_heads=2, d_ff=32).eval()
    with torch.no_grad():  # they start at zero: give the route pairs' scalars values to carry
        net.issuer_route_bias.weight.normal_()
        net.route_mcc_bias.weight.normal_()
    return net


def _batch(store: EventStore) -> dict[str, torch.Tensor]:
    rows = torch.from_numpy(store.rows(TRAIN)[-64:])
    return DeviceStore(store).gather(rows)


@torch.no_grad()
def _query_from_states(
    net: IssuerSeqNet, x: dict[str, torch.Tensor], states: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    return net.query(
        packed(x, "cur", F.CATEGORICAL),
        packed(x, "cur", F.NUMERIC),
        stack_streams([states[s] for s in STREAMS]),
        stack_streams([packed(x, s, F.RELATIVE) for s in STREAMS]),
        torch.stack([x[f"{s}_length"] for s in STREAMS]),
        x["decline_response_code"],
        x["decline_advice_code"],
    )


@torch.no_grad()
def test_query_over_states_computed_one_event_at_a_time_equals_training(
    store: EventStore, net: IssuerSeqNet
) -> None:
    """Serving encodes each event alone when it happens and zero-fills empty slots;
    training encodes whole windows: the logits are the same."""
    x = _batch(store)
    assert any(bool((x[f"{s}_length"] < x[f"{s}_cause"].shape[1]).any()) for s in STREAMS)
    states = {}
    for s in STREAMS:
        cat, num = packed(x, s, F.CATEGORICAL), packed(x, s, F.NUMERIC)
        b, k = cat.shape[:2]
        one_by_one = torch.stack(
            [net.state(cat[i, j], num[i, j]) for i in range(b) for j in range(k)]
        ).reshape(b, k, -1)
        real = torch.arange(-k, 0)[None, :] >= -x[f"{s}_length"][:, None]
        states[s] = one_by_one * real[..., None]  # padding: zeros, as the scorer fills it
        assert states[s].shape[-1] == net.state_size()
    approval, retry = _query_from_states(net, x, states)
    want_approval, want_retry = net.logits(x)
    torch.testing.assert_close(approval, want_approval, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(retry, want_retry, rtol=1e-5, atol=1e-5)


def test_training_runs_streams_at_their_own_windows_and_gives_the_stacked_logits(
    store: EventStore,
) -> None:
    """Training computes the card-at-merchant stream at its own 4 slots and the card and
    issuer streams together at 8; evaluation and export stack all three at 8: equal logits."""
    assert equal_window_runs([8, 8, 4]) == [slice(0, 2), slice(2, 3)]
    assert equal_window_runs([4, 8, 4]) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    assert equal_window_runs([8]) == [slice(0, 1)]
    torch.manual_seed(0)
    net = IssuerSeqNet(store.vocab.sizes(), n_delays=8, d_model=16, n_heads=2, d_ff=32, dropout=0)
    x = _batch(store)
    assert [x[f"{s}_cause"].shape[1] for s in STREAMS] == [8, 8, 8, 4]
    with torch.no_grad():
        trained = net.train().logits(x)
        stacked = net.eval().logits(x)
    for got, want in zip(trained, stacked, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_route_query_is_the_query_of_each_candidate_route(
    store: EventStore, net: IssuerSeqNet
) -> None:
    """One attempt through R candidate routes: `route_query`, the shared streams at a batch
    of 1, gives `query`'s approval logits of R copies of the attempt, each with its route and
    its own route stream; the shared streams' query tokens do not read the route."""
    x = _batch(store)
    states = {s: net.state(packed(x, s, F.CATEGORICAL), packed(x, s, F.NUMERIC)) for s in STREAMS}
    routes = torch.tensor([1, 2, 3])
    r, row = len(routes), 5
    cur_cat = packed(x, "cur", F.CATEGORICAL)[row].repeat(r, 1)
    cur_cat[:, F.ROUTE] = routes
    cur_num = packed(x, "cur", F.NUMERIC)[row].repeat(r, 1)
    stacked = stack_streams([states[s] for s in STREAMS])  # (N, B, K, S)
    rel = stack_streams([packed(x, s, F.RELATIVE) for s in STREAMS])
    length = torch.stack([x[f"{s}_length"] for s in STREAMS])
    route = STREAMS.index("route")
    # candidate i reads the route stream of row 10 + i: a stream of its own
    copies = [t[:, [row] * r].clone() for t in (stacked, rel, length)]
    for t, full in zip(copies, (stacked, rel, length), strict=True):
        t[route] = full[route, 10 : 10 + r]
    none = torch.zeros(r, dtype=torch.long)  # no decline asked about
    want, _ = net.query(cur_cat, cur_num, *copies, none, none)
    got = net.route_query(
        cur_cat,
        cur_num,
        *(t[list(F.SHARED), row : row + 1] for t in (stacked, rel, length)),
        *(t[route, 10 : 10 + r, None] for t in (stacked, rel, length)),
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(set(want.tolist())) == r  # the candidates differ
    _, tokens, _ = net.current(cur_cat, cur_num)
    for i in F.SHARED:
        torch.testing.assert_close(tokens[i], tokens[i][:1].expand(r, -1))
    assert not torch.allclose(tokens[route], tokens[route][:1].expand(r, -1))


@torch.no_grad()
def test_through_route_is_the_query_of_a_batch_through_other_routes(
    store: EventStore, net: IssuerSeqNet
) -> None:
    """A batch through routes it was not sent through (evaluation's routing matrix): the
    shared part once (`shared_vectors`), then `through_route` per route with that route's
    stream, gives `query`'s approval logits of the batch with the route and its stream
    replaced."""
    x = _batch(store)
    states = {s: net.state(packed(x, s, F.CATEGORICAL), packed(x, s, F.NUMERIC)) for s in STREAMS}
    cat, num = packed(x, "cur", F.CATEGORICAL), packed(x, "cur", F.NUMERIC)
    stacked = stack_streams([states[s] for s in STREAMS])
    rel = stack_streams([packed(x, s, F.RELATIVE) for s in STREAMS])
    length = torch.stack([x[f"{s}_length"] for s in STREAMS])
    route, b = STREAMS.index("route"), len(cat)
    shared, payment, by_route = net.shared_vectors(
        cat, num, *(t[list(F.SHARED)] for t in (stacked, rel, length))
    )
    none = torch.zeros(b, dtype=torch.long)
    answers = []
    for r, shift in ((1, 0), (2, 3), (3, 7)):
        cat_r = cat.clone()
        cat_r[:, F.ROUTE] = r
        # each row reads another row's route stream: a route it was not sent through
        other = torch.roll(torch.arange(b), shift)
        route_inputs = [t[route, other] for t in (stacked, rel, length)]
        replaced = [t.clone() for t in (stacked, rel, length)]
        for t, part in zip(replaced, route_inputs, strict=True):
            t[route] = part
        want, _ = net.query(cat_r, num, *replaced, none, none)
        got = net.through_route(cat_r, num, shared, payment, by_route, *route_inputs)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        answers.append(got)
    assert not torch.allclose(answers[0], answers[1])  # the route and its stream matter


@torch.no_grad()
def test_the_route_reads_the_issuers_answers_through_that_route(
    store: EventStore, net: IssuerSeqNet
) -> None:
    """`issuer_by_route`, picked by the attempt's route (`through_issuer`), is the issuer
    stream's history counts of the events sent through that route alone; padding and other
    routes' events are not counted; and the term reaches the approval only through the
    route stream's slot, zeros where the issuer's stream is ablated."""
    x = _batch(store)
    cat, num = packed(x, "issuer", F.CATEGORICAL), packed(x, "issuer", F.NUMERIC)
    parts, rel = net.state_parts(cat, num), packed(x, "issuer", F.RELATIVE)
    by_route = net.issuer_by_route(parts["cause"], parts["route"], rel)
    real = torch.arange(-cat.shape[1], 0)[None, :] >= -x["issuer_length"][:, None]
    routes = sorted(set(cat[..., F.ROUTE][real].tolist()))
    assert len(routes) >= 2  # the batch's issuers answered through several routes
    cur = packed(x, "cur", F.CATEGORICAL)
    for route in routes:
        through = ((cat[..., F.ROUTE] == route) & real).float()[..., None]
        table = net.counts["issuer"].table(parts["cause"] * through, rel[..., 0], rel[..., 1])
        assert table.sum() > 0
        cur_r = cur.clone()
        cur_r[:, F.ROUTE] = route
        want = net.issuer_route(torch.log1p(table).flatten(1))
        torch.testing.assert_close(net.through_issuer(by_route, cur_r), want)
    slots = net.route_slot.flatten().tolist()
    assert slots == [float(s == "route") for s in STREAMS]
    ablated = IssuerSeqNet(store.vocab.sizes(), n_delays=8, d_model=16, use_issuer=False)
    assert not ablated.route_slot.any()


@torch.no_grad()
def test_the_pair_terms_enter_at_query_time(store: EventStore, net: IssuerSeqNet) -> None:
    """The same cached states answer differently when the attempt stands elsewhere in time:
    how an event stands to the attempt enters at query time, not in its state."""
    x = _batch(store)
    states = {s: net.state(packed(x, s, F.CATEGORICAL), packed(x, s, F.NUMERIC)) for s in STREAMS}
    base, _ = _query_from_states(net, x, states)
    later = dict(x)
    for s in STREAMS:
        later[f"{s}_log_minutes_since"] = x[f"{s}_log_minutes_since"] + 2.0
    moved, _ = _query_from_states(net, later, states)
    assert not torch.allclose(base, moved)


@torch.no_grad()
def test_the_pair_compares_the_events_amount_with_the_attempts(net: IssuerSeqNet) -> None:
    """The pair term carries each event's log amount less the attempt's and whether it was at
    least as large."""
    rel = torch.zeros(1, 3, 3)
    rel[..., 0] = 5.0  # log1p(minutes) since: every event the same
    day, today = torch.zeros(1, 3, 31), torch.zeros(1, 31)
    events = torch.tensor([[2.0, 3.0, 4.5]])  # the events' log1p(amount)
    pair = net.pair(rel, day, today, torch.tensor([3.0]), events, torch.tensor(1.0))
    assert pair.shape == (1, 3, N_PAIR)
    assert torch.equal(pair[0, :, 4], torch.tensor([-1.0, 0.0, 1.5]))
    assert torch.equal(pair[0, :, 5], torch.tensor([0.0, 1.0, 1.0]))  # equal counts as at least

    # every stream's query reads them, into its history tokens
    assert all(net.queries[s].pair.in_features == N_PAIR for s in STREAMS)

    # the route's stream does not compare them: its events are other cards' attempts
    assert net.compares_amounts.tolist() == [float(s != "route") for s in STREAMS]
    blind = net.pair(rel, day, today, torch.tensor([3.0]), events, torch.tensor(0.0))
    assert not blind[..., 4:6].any()
    rest = [i for i in range(N_PAIR) if i not in (4, 5)]
    assert torch.equal(blind[..., rest], pair[..., rest])  # the rest as before


@torch.no_grad()
def test_the_heads_read_the_codes_of_the_cards_latest_event(
    store: EventStore, net: IssuerSeqNet
) -> None:
    """`own_past` carries, beside the payment so far, the response and advice codes of the
    card stream's last slot (its latest event: the windows are right-aligned): that event's
    code embeddings, zeros for an empty slot; the codes of earlier card events do not enter
    this part. The heads read it: their input is the streams, the attempt and the two."""
    x = _batch(store)
    card = net.state_parts(packed(x, "card", F.CATEGORICAL), packed(x, "card", F.NUMERIC))
    at = net.state_parts(
        packed(x, "card_merchant", F.CATEGORICAL), packed(x, "card_merchant", F.NUMERIC)
    )
    cur, _, today = net.current(packed(x, "cur", F.CATEGORICAL), packed(x, "cur", F.NUMERIC))
    near = packed(x, "card_merchant", F.RELATIVE)
    past = net.own_past(cur, today, at, near, card["codes"])
    d = net.d_model
    expected = net.decline_code(x["card_response_code"][:, -1]) + net.decline_advice(
        x["card_advice_code"][:, -1]
    )
    assert expected.abs().sum() > 0
    torch.testing.assert_close(past[:, d:], expected)
    empty = card["codes"].clone()
    empty[:, -1] = 0  # an empty slot holds a padding event's codes: zeros
    assert torch.all(net.own_past(cur, today, at, near, empty)[:, d:] == 0)
    earlier = card["codes"].clone()
    earlier[:, :-1] = 0
    torch.testing.assert_close(net.own_past(cur, today, at, near, earlier), past)
    assert net.approval_head[0].in_features == (len(STREAMS) + 3) * d


@torch.no_grad()
def test_the_card_latest_answer_reaches_the_approval_logit_directly(
    store: EventStore, net: IssuerSeqNet
) -> None:
    """`approval_logit` adds a linear term of the card's latest codes to the approval head's
    logit: moving its weight by v moves every approval logit by v . those codes (the card
    stream's last slot) and leaves the retry logits alone. It starts at zero."""
    assert torch.all(net.latest_answer.weight == 0) and torch.all(net.latest_answer.bias == 0)
    x = _batch(store)
    approval, retry = net.logits(x)
    latest = net.decline_code(x["card_response_code"][:, -1]) + net.decline_advice(
        x["card_advice_code"][:, -1]
    )
    v = torch.randn(net.d_model, generator=torch.Generator().manual_seed(0))
    net.latest_answer.weight += v
    try:
        moved, moved_retry = net.logits(x)
    finally:
        net.latest_answer.weight -= v
    assert (moved - approval).abs().max() > 0
    torch.testing.assert_close(moved - approval, latest @ v, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(moved_retry, retry)


@torch.no_grad()
@pytest.mark.parametrize("table", ["issuer_route_bias", "route_mcc_bias"])
def test_the_route_pairs_move_the_approval_logit_of_their_pair_only(
    store: EventStore, net: IssuerSeqNet, table: str
) -> None:
    """`route_pairs`: a scalar of the approval logit per issuer x route and per route x MCC
    of the attempt. Moving one pair's scalar by v moves the approval logit of exactly the
    attempts of that pair by v, and no retry logit. A new network's scalars are zeros."""
    fresh = IssuerSeqNet(store.vocab.sizes(), n_delays=8, d_model=16, n_heads=2, d_ff=32)
    assert torch.all(fresh.issuer_route_bias.weight == 0)
    assert torch.all(fresh.route_mcc_bias.weight == 0)
    x = _batch(store)
    other = "issuer" if table == "issuer_route_bias" else "mcc"
    ids = x[f"cur_{other}"] * net.n_routes + x["cur_route"]
    assert len(torch.unique(ids)) > 1  # the batch holds other pairs too
    approval, retry = net.logits(x)
    weight = getattr(net, table).weight
    weight[ids[0]] += 0.75
    try:
        moved, moved_retry = net.logits(x)
    finally:
        weight[ids[0]] -= 0.75
    want = torch.where(ids == ids[0], 0.75, 0.0)
    torch.testing.assert_close(moved - approval, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(moved_retry, retry)


@torch.no_grad()
def test_empty_histories_give_finite_outputs(store: EventStore, net: IssuerSeqNet) -> None:
    x = _batch(store)
    for s in STREAMS:
        x[f"{s}_length"] = torch.zeros_like(x[f"{s}_length"])
        for f in (*F.CATEGORICAL, *F.NUMERIC, *F.RELATIVE):
            x[f"{s}_{f}"] = torch.zeros_like(x[f"{s}_{f}"])
    p_approve, p_retry = net(x)
    assert torch.isfinite(p_approve).all() and torch.isfinite(p_retry).all()


@torch.no_grad()
def test_query_attention_is_multihead_attentions() -> None:
    """The written-out attention of one query gives nn.MultiheadAttention's result."""
    from issuer_seq.model.network import QueryBlock

    torch.manual_seed(0)
    block = QueryBlock(32, 4, 64, 0.0).eval()
    q, memory = torch.randn(5, 32), torch.randn(5, 7, 32)
    pad = torch.zeros(5, 8, dtype=torch.bool)
    pad[0, 1:] = True  # an empty history: the query attends to itself alone
    pad[1, 1:4] = True
    h = block.norm_q(q[:, None])
    tokens = torch.cat([h, block.norm_m(memory)], dim=1)
    a, _ = block.attn(h, tokens, tokens, key_padding_mask=pad, need_weights=False)
    y = q[:, None] + a
    want = (y + block.ff(block.norm2(y)))[:, 0]
    torch.testing.assert_close(block(q, memory, pad), want, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_every_stream_at_once_is_each_streams_own_modules() -> None:
    """The network runs the three streams as one computation (parameters stacked, windows
    right-aligned to the longest): each stream's result is what its own modules give on its
    own window, whatever the windows' lengths."""
    from issuer_seq.model.network import (
        HistoryCounts,
        HistoryStats,
        StreamQuery,
        linear_n,
        stream_queries_n,
    )

    torch.manual_seed(0)
    d, b, ks = 16, 5, (7, 4, 1)
    queries = [StreamQuery(d, 2, 2, 32, 0.0).eval() for _ in ks]
    for query in queries:  # off their initial values (norms 1 and 0, attention biases 0)
        for param in query.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    current = torch.randn(b, d)
    states = [torch.randn(b, k, d) for k in ks]
    pairs = [torch.randn(b, k, N_PAIR) for k in ks]
    lengths = [torch.randint(0, k + 1, (b,)) for k in ks]
    got = stream_queries_n(
        queries,
        current.expand(len(ks), b, d),
        stack_streams(states),
        stack_streams(pairs),
        torch.stack(lengths),
        False,
    )
    for i, query in enumerate(queries):
        torch.testing.assert_close(
            got[i], query(current, states[i], pairs[i], lengths[i]), rtol=1e-5, atol=1e-5
        )

    n_causes = 6
    counts = [HistoryCounts(n_causes, d) for _ in ks]
    stats = [HistoryStats(n_causes, d) for _ in ks]
    onehot = [torch.eye(n_causes)[torch.randint(0, n_causes, (b, k)), 1:] for k in ks]
    minutes = [torch.rand(b, k) * 10 for k in ks]
    flags = [torch.randint(0, 2, (b, k)).float() for k in ks]
    stacked_onehot, stacked_minutes = stack_streams(onehot), stack_streams(minutes)
    count_table = torch.log1p(
        counts[0].table(stacked_onehot, stacked_minutes, stack_streams(flags))
    )
    stat_table = stats[0].table(stacked_onehot, stacked_minutes, stack_streams(flags))
    got_counts = linear_n(count_table.flatten(-2), [c.proj for c in counts])
    got_stats = linear_n(stat_table.flatten(-2), [s.proj for s in stats])
    for i in range(len(ks)):
        want_counts = counts[i](onehot[i], minutes[i], flags[i])
        want_stats = stats[i](onehot[i], minutes[i], flags[i])
        torch.testing.assert_close(got_counts[i], want_counts, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_stats[i], want_stats, rtol=1e-5, atol=1e-5)


def test_the_sum_of_embeddings_has_the_lookups_gradient() -> None:
    """Training's embedding sum (`EmbeddingSum`: embedding_bag, its own backward) gives the
    value and the weight gradient of looking each id up and summing, repeated ids included."""
    from issuer_seq.model.network import EmbeddingSum

    torch.manual_seed(0)
    weight = torch.randn(11, 6, requires_grad=True)
    ids = torch.randint(0, 11, (40, 5))
    ids[0] = 3  # one id five times in a row
    upstream = torch.randn(40, 6)
    got = EmbeddingSum.apply(ids, weight)
    (got_grad,) = torch.autograd.grad(got, weight, upstream)
    want = nn.functional.embedding(ids, weight).sum(1)
    (want_grad,) = torch.autograd.grad(want, weight, upstream)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, want_grad)
