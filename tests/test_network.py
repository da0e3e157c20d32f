"""The factored network: what training computes is what serving computes from cached states."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from issuer_seq import features as F
from issuer_seq.data.batches import DeviceStore
from issuer_seq.data.store import TRAIN, EventStore, StoreConfig, build_store
from issuer_seq.features import STREAMS
from issuer_seq.model.network import IssuerSeqNet, packed
from issuer_seq.schema import load_log


@pytest.fixture(scope="module")
def store(sim_dir: Path) -> EventStore:
    return build_store(load_log(sim_dir), StoreConfig(k_card=8, k_issuer=8, k_card_merchant=4))


@pytest.fixture(scope="module")
def net(store: EventStore) -> IssuerSeqNet:
    torch.manual_seed(0)
    return IssuerSeqNet(store.vocab.sizes(), n_delays=8, d_model=16, n_heads=2, d_ff=32).eval()


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
        states,
        {s: packed(x, s, F.RELATIVE) for s in STREAMS},
        {s: x[f"{s}_length"] for s in STREAMS},
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
