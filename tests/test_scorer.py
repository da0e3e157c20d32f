"""The scorer: verified bundles, explicit providers, exact replay of the batch pipeline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from issuer_seq.data.batches import DeviceStore
from issuer_seq.data.store import StoreConfig, build_store
from issuer_seq.errors import IssuerSeqError
from issuer_seq.features import Vocab
from issuer_seq.model.network import IssuerSeqNet
from issuer_seq.schema import load_log
from issuer_seq.serve.scorer import BundleError, Scorer


@pytest.fixture(scope="module")
def bundle(tiny_bundle: tuple[Path, Path, Path]) -> tuple[Path, Path, Path]:
    return tiny_bundle


def test_scorer_never_imports_torch(bundle: tuple[Path, Path, Path]) -> None:
    code = (
        "import sys; from issuer_seq.serve.scorer import Scorer;"
        f"s = Scorer({str(bundle[2])!r});"
        "bad = [m for m in ('torch', 'pytorch_lightning') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_tampered_or_foreign_bundles_are_refused(
    bundle: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(bundle[2], copy)
    with (copy / "model.onnx").open("r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="model.onnx has sha256"):
        Scorer(copy)
    shutil.copy(bundle[2] / "model.onnx", copy / "model.onnx")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format version 99"):
        Scorer(copy)
    with pytest.raises(BundleError, match="no manifest.json"):
        Scorer(tmp_path)


def test_missing_provider_fails_or_degrades_loudly(
    bundle: tuple[Path, Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(IssuerSeqError, match="CUDAExecutionProvider"):
        Scorer(bundle[2], providers=("CUDAExecutionProvider",))
    scorer = Scorer(bundle[2], providers=("CUDAExecutionProvider",), allow_fallback=True)
    assert scorer.session.get_providers() == ["CPUExecutionProvider"]
    assert "DEGRADED" in caplog.text


def test_replayed_log_scores_like_the_batch_pipeline(bundle: tuple[Path, Path, Path]) -> None:
    data, run, out = bundle
    spec = json.loads((run / "model_spec.json").read_text())
    vlog = load_log(data)
    config = StoreConfig.from_json(spec["store"])
    store = build_store(vlog, config, vocab=Vocab.from_json(spec["vocab"]))
    assert (store.card_merchant_index.length > 0).mean() > 0.2  # the stream is exercised
    net = IssuerSeqNet(store.vocab.sizes(), **spec["net"])
    net.load_state_dict(torch.load(run / "model.pt"))
    net.eval()
    rows = torch.arange(len(store))
    batch = DeviceStore(store).gather(rows)
    with torch.no_grad():
        expected = net(batch)[0].numpy()
    scorer = Scorer(out)
    got = []
    for rec in vlog.frame.to_dict("records"):
        got.append(scorer.score({**rec, "response_code": None, "advice_code": None}))
        scorer.observe(rec)
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-3, atol=1e-5)


ATTEMPT = {
    "ts": "2026-02-01T10:00:00Z",
    "card_id": 1,
    "issuer_id": 3,
    "merchant_id": 7,
    "network": "mastercard",
    "card_type": "debit",
    "issuer_country": "DE",
    "mcc": "4899",
    "merchant_country": "DE",
    "amount": 250.0,
    "currency": "EUR",
    "initiator": "MIT",
    "is_recurring": True,
    "three_ds": False,
    "attempt": 1,
}


def test_retry_advice_obeys_the_network_rules(bundle: tuple[Path, Path, Path]) -> None:
    scorer = Scorer(bundle[2])
    base = ATTEMPT
    hard = scorer.advise_retry({**base, "response_code": "41", "advice_code": "03"})
    assert hard.action == "no_retry" and not any(hard.allowed.values())
    assert hard.rule in ("hard_decline", "visa_category_1", "mac_do_not_retry", "never_retry")
    wait = scorer.advise_retry({**base, "response_code": "51", "advice_code": "27"})  # 4 days
    assert [k for k, v in wait.allowed.items() if v] == ["4d", "7d"]
    assert wait.action in ("4d", "7d", "no_retry")
    assert set(wait.curve) == {"5m", "30m", "2h", "6h", "1d", "2d", "4d", "7d"}
    assert all(0 <= p <= 1 for p in wait.curve.values())
    checkout = {**base, "initiator": "CIT", "is_recurring": False}
    cit = scorer.advise_retry({**checkout, "response_code": "05", "advice_code": None})
    assert [k for k, v in cit.allowed.items() if v] == ["5m", "30m"]
    assert cit.action in ("5m", "30m", "no_retry")
    with pytest.raises(IssuerSeqError, match="approval"):
        scorer.advise_retry({**base, "response_code": "00"})


def test_payment_id_is_required_where_the_model_reads_it(bundle: tuple[Path, Path, Path]) -> None:
    scorer = Scorer(bundle[2])
    first = {**ATTEMPT, "card_id": "pay-1", "initiator": "CIT", "is_recurring": False}
    scorer.score(first)  # a first attempt has no earlier attempt to find: none needed
    with pytest.raises(IssuerSeqError, match="payment_id"):
        scorer.score({**first, "attempt": 2})
    with pytest.raises(IssuerSeqError, match="payment_id"):
        scorer.observe({**first, "response_code": "51", "advice_code": None})
    scorer.observe({**first, "payment_id": "p1", "response_code": "51", "advice_code": None})
    later = {**first, "ts": "2026-02-01T10:05:00Z"}
    retry = scorer.score({**later, "payment_id": "p1", "attempt": 2})
    new_payment = scorer.score({**later, "payment_id": "p2"})
    assert retry != pytest.approx(new_payment, abs=1e-6)  # the retry reads its decline


def test_concurrent_scoring_and_observing(bundle: tuple[Path, Path, Path]) -> None:
    data, _, out = bundle
    scorer = Scorer(out)
    records = load_log(data).frame.head(400).to_dict("records")
    errors: list[BaseException] = []

    def work(part: list[dict]) -> None:
        try:
            for rec in part:
                p = scorer.score(rec)
                assert 0 <= p <= 1
                scorer.observe(rec)
        except BaseException as exc:  # noqa: BLE001 - collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(records[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
