"""The scorer's numpy feature path equals the training batches' (replay of a whole log)."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from issuer_seq.data.batches import DeviceStore, input_names
from issuer_seq.data.store import StoreConfig, build_store
from issuer_seq.features import STREAMS
from issuer_seq.schema import load_log
from issuer_seq.serve.inputs import Event, build_inputs, encode_event, stream_key
from tests.conftest import make_sim


@pytest.fixture(scope="module")
def replay_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sim(tmp_path_factory.mktemp("replay"), seed=11, n_cards=250, days=15)


@pytest.mark.parametrize("lag_s", [0, 90])
def test_replayed_log_gives_the_training_inputs(replay_dir: Path, lag_s: int) -> None:
    vlog = load_log(replay_dir)
    config = StoreConfig(k_card=5, k_issuer=7, k_card_merchant=3, lag_s=lag_s)
    store = build_store(vlog, config)
    expected = DeviceStore(store).gather(torch.arange(len(store)))
    records = vlog.frame.to_dict("records")
    events: dict[tuple[str, str], list[Event]] = defaultdict(list)  # (stream, key) -> events
    got: dict[str, list[np.ndarray]] = defaultdict(list)
    for rec in records:  # time order: score, then observe the outcome
        current = encode_event(store.vocab, {**rec, "response_code": None, "advice_code": None})
        keys = {s: (s, stream_key(s, rec)) for s in STREAMS}
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


def test_inputs_module_never_imports_torch() -> None:
    code = (
        "import sys, issuer_seq.serve.inputs, issuer_seq.retry_policy;"
        "bad = [m for m in ('torch', 'pytorch_lightning', 'pandas') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
