"""The scorer's numpy feature path equals the training batches' (replay of a whole log)."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from issuer_seq import features as F
from issuer_seq.data.batches import DeviceStore, input_names
from issuer_seq.data.store import StoreConfig, build_store
from issuer_seq.features import STREAMS
from issuer_seq.schema import load_log
from issuer_seq.serve.inputs import (
    Event,
    build_inputs,
    build_query_inputs,
    encode_event,
    query_buffers,
    stream_key,
)
from tests.conftest import make_sim


@pytest.fixture(scope="module")
def replay_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sim(tmp_path_factory.mktemp("replay"), seed=11, n_cards=250, days=15)


@pytest.mark.parametrize("lag_s", [0, 90])
def test_replayed_log_gives_the_training_inputs(replay_dir: Path, lag_s: int) -> None:
    vlog = load_log(replay_dir)
    config = StoreConfig(k_card=5, k_issuer=7, k_route=7, k_card_merchant=3, lag_s=lag_s)
    store = build_store(vlog, config)
    expected = DeviceStore(store).gather(torch.arange(len(store)))
    records = vlog.frame.to_dict("records")
    events: dict[tuple[str, str], list[Event]] = defaultdict(list)  # (stream, key) -> events
    got: dict[str, list[np.ndarray]] = defaultdict(list)
    for rec in records:  # time order: score, then observe the outcome
        current = encode_event(store.vocab, {**rec, "response_code": None, "advice_code": None})
        keys = {s: (s, stream_key(s, rec, current)) for s in STREAMS}
        histories = {s: [events[key]] for s, key in keys.items()}
        inputs = build_inputs([current], histories, config.ks, lag_s=lag_s)
        for k, v in inputs.items():
            got[k].append(v[0])
        event = encode_event(store.vocab, rec)
        for key in keys.values():
            events[key].append(event)
    assert set(got) == set(input_names())
    assert (expected["card_merchant_length"] > 0).float().mean() > 0.2  # the stream is used
    assert expected["card_same_payment"].sum() > 0  # retries find their payment's attempts
    for name in input_names():
        if name.startswith("decline_"):
            continue  # training feeds the row's own outcome there; scoring feeds NONE
        mine = np.stack(got[name])
        theirs = expected[name].numpy()
        assert mine.dtype == theirs.dtype, name
        if mine.dtype == np.float32:
            np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(mine, theirs, err_msg=name)


def test_query_inputs_relate_every_slot_as_the_training_inputs(replay_dir: Path) -> None:
    """The query graph's stacked `rel` and `length`, written request after request into one
    reused set of inputs (as the scorer's bound ones), are `build_inputs`' relative features
    of each stream, right-aligned to the longest window, padding zeros; first attempts sent
    without a payment id match no payment, not each other."""
    vlog = load_log(replay_dir)
    config = StoreConfig(k_card=5, k_issuer=7, k_route=7, k_card_merchant=3)
    vocab = build_store(vlog, config).vocab
    ks, k = config.ks, max(config.ks.values())
    into = query_buffers(1, ks, state_size=2)
    events: dict[tuple[str, str], list[Event]] = defaultdict(list)
    without_payment = 0
    for i, rec in enumerate(vlog.frame.to_dict("records")):
        if rec["attempt"] == 1 and i % 3 == 0:
            rec = {**rec, "payment_id": None}
            without_payment += 1
        current = encode_event(vocab, {**rec, "response_code": None, "advice_code": None})
        keys = {s: (s, stream_key(s, rec, current)) for s in STREAMS}
        histories = {s: [events[key]] for s, key in keys.items()}
        want = build_inputs([current], histories, ks)
        got = build_query_inputs(
            [current], histories, ks, "encoder", lambda c, n: np.zeros((len(c), 2)), 2, into=into
        )
        assert got is into
        for j, s in enumerate(STREAMS):
            assert got["length"][0, j] == want[f"{s}_length"][0]
            rel = np.stack([want[f"{s}_{name}"][0] for name in F.RELATIVE], axis=-1)
            np.testing.assert_array_equal(got["rel"][0, j, k - ks[s] :], rel, err_msg=s)
            assert not got["rel"][0, j, : k - ks[s]].any()
        event = encode_event(vocab, rec)
        for key in keys.values():
            events[key].append(event)
    assert without_payment > 50


def test_inputs_module_never_imports_torch() -> None:
    code = (
        "import sys, issuer_seq.serve.inputs, issuer_seq.retry_policy;"
        "bad = [m for m in ('torch', 'pytorch_lightning', 'pandas') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_one_events_numeric_features_are_the_vectorized_ones() -> None:
    """A request encodes its attempt with `numeric_one` (the standard library), training
    with `numeric` (numpy): rounded to float32 they are the same, bit for bit, across
    decades of timestamps, every UTC offset, tiny to huge amounts and attempt numbers."""

    rng = np.random.default_rng(0)
    n = 20_000
    ts = rng.integers(0, 4_000_000_000, n)
    ts[:4] = [0, 86_399, 951_782_400, 4_102_444_799]  # epoch, a day's last second, 29 Feb
    offset = rng.choice(np.arange(-24, 29) * 1_800, n)  # half hours, -12 h to +14 h
    amount = np.round(rng.lognormal(3.0, 2.0, n), 2)
    amount[:3] = [0.0, 0.01, 1e9]
    attempt = rng.integers(1, 30, n)
    want = np.stack(list(F.numeric(amount, attempt, ts, offset).values()), axis=1)
    got = np.array(
        [
            F.numeric_one(float(a), int(k), int(t), int(o))
            for a, k, t, o in zip(amount, attempt, ts, offset, strict=True)
        ],
        dtype=np.float32,
    )
    assert list(F.numeric(amount[:1], attempt[:1], ts[:1], offset[:1])) == list(F.NUMERIC)
    np.testing.assert_array_equal(got, want)
