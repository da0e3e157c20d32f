"""The scorer: verified bundles, explicit providers, exact replay of the batch pipeline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from issuer_seq.data.batches import DeviceStore
from issuer_seq.data.store import StoreConfig, build_store
from issuer_seq.errors import IssuerSeqError
from issuer_seq.features import Vocab
from issuer_seq.model.network import IssuerSeqNet
from issuer_seq.recalibration import (
    RecalibrationSettings,
    RouteRecalibrationSettings,
    logit,
    recalibrated,
    recalibrated_routes,
)
from issuer_seq.schema import load_log
from issuer_seq.serve.inputs import encode_event, stream_key
from issuer_seq.serve.scorer import BundleError, Scorer
from issuer_seq.serve.service import ServeSettings, Service
from issuer_seq.serve.state import MemoryStore
from issuer_seq.timestamps import epoch_seconds


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


def test_the_scorer_and_the_service_refuse_a_manifest_alike(tmp_path: Path) -> None:
    """One manifest reader: the same error, before loading (service) or while (scorer)."""
    loaders = [lambda: Scorer(tmp_path), lambda: Service(ServeSettings(artifact_dir=tmp_path))]
    for load in loaders:
        with pytest.raises(BundleError, match="no manifest.json"):
            load()
    (tmp_path / "manifest.json").write_text('{"model": {"name": "m"}')  # cut short
    for load in loaders:
        with pytest.raises(BundleError, match="not a readable bundle manifest"):
            load()


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


def test_recalibration_in_the_service_is_the_batch_replay(bundle: tuple[Path, Path, Path]) -> None:
    """A scorer that follows recent outcomes answers what `recalibrated` (evaluate's) gives
    for the same scores and outcomes, and the routes it scores move by the same intercept."""
    data, _, out = bundle
    settings = RecalibrationSettings(window_h=24, step_h=1, min_outcomes=50)
    plain, following = Scorer(out), Scorer(out, recalibration=settings)
    records = load_log(data).frame.to_dict("records")
    raw, got = [], []
    for rec in records:
        query = {**rec, "response_code": None, "advice_code": None}
        raw.append(plain.score(query))
        got.append(following.score(query))
        plain.observe(rec)
        following.observe(rec)
    approved = np.array([r["response_code"] == "00" for r in records], dtype=float)
    t = np.array([epoch_seconds(r["ts"]) for r in records], dtype=float)
    expected = recalibrated(np.array(raw), approved, t, settings)
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-5, atol=1e-6)
    assert following.recalibration is not None
    bias = following.recalibration.intercept.value
    assert bias != 0.0  # the tiny model is off: there was something to follow
    # score_routes: every candidate by the same intercept
    attempt = {**records[-1], "response_code": None, "advice_code": None}
    routes = sorted({str(r["route"]) for r in records})
    np.testing.assert_allclose(
        logit(following.score_routes(attempt, routes)),
        logit(plain.score_routes(attempt, routes)) + bias,
        atol=1e-4,
    )
    # a retry's route is chosen with the intercept known at the decline, not at the retry's
    # later time (which would refit ahead of the outcomes and hold until then)
    for decline in (r for r in reversed(records) if r["response_code"] != "00"):
        advice = following.advise_retry(decline, [(r, 0.0) for r in routes])
        if advice.route is not None and (advice.action.delay_s or 0) >= 3600:
            break
    else:
        pytest.fail("no decline advised a retry an hour or more later")
    assert following.recalibration.intercept.refitted_at <= t[-1]


def test_route_recalibration_in_the_service_is_the_batch_replay(
    bundle: tuple[Path, Path, Path],
) -> None:
    """A scorer recalibrating per issuer x route answers each attempt's routes as
    `recalibrated_routes` (evaluate's) does for the same scores and outcomes, and `score` adds
    the intercept of the attempt's own issuer x route."""
    data, _, out = bundle
    settings = RouteRecalibrationSettings(window_h=24, step_h=1, prior_sd=1.0)
    plain, following = Scorer(out), Scorer(out, route_recalibration=settings)
    records = load_log(data).frame.to_dict("records")
    routes = sorted({str(r["route"]) for r in records})
    raw, got = [], []
    for rec in records:
        query = {**rec, "response_code": None, "advice_code": None}
        raw.append(plain.score_routes(query, routes))
        got.append(following.score_routes(query, routes))
        plain.observe(rec)
        following.observe(rec)
    approved = np.array([r["response_code"] == "00" for r in records], dtype=float)
    t = np.array([epoch_seconds(r["ts"]) for r in records], dtype=float)
    expected = recalibrated_routes(
        np.array(raw),
        np.array([str(r["issuer_id"]) for r in records], dtype=object),
        np.array([routes.index(str(r["route"])) for r in records]),
        approved,
        t,
        routes,
        settings,
    )
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-5, atol=1e-6)
    assert following.route_recalibration is not None
    pairs = following.route_recalibration.intercepts
    assert pairs.values and any(b != 0.0 for b in pairs.values.values())
    # score: the attempt's route's intercept, as known at its time
    rec = records[-1]
    query = {**rec, "response_code": None, "advice_code": None}
    bias = pairs.bias(epoch_seconds(rec["ts"]), str(rec["issuer_id"]), str(rec["route"]))
    assert logit(following.score(query)) == pytest.approx(
        logit(plain.score(query)) + bias, abs=1e-4
    )


def test_states_of_another_encoder_or_none_are_recomputed_not_zero(
    bundle: tuple[Path, Path, Path], redis_url: str
) -> None:
    """A store filled without states (before they were kept, by a backfill) or by another
    bundle's encoder scores exactly as one this scorer filled itself: each such state is
    recomputed from the event's fields. Over Redis, states travel with the events."""
    from issuer_seq.serve.state import RedisStore, keep_lengths

    data, _, out = bundle
    records = load_log(data).frame.head(600).to_dict("records")
    own = Scorer(out)
    bare = Scorer(out, store=MemoryStore(keep_lengths(own.ks)))
    foreign = Scorer(out, store=MemoryStore(keep_lengths(own.ks)))
    shared = Scorer(out, store=RedisStore.from_url(redis_url, keep_lengths(own.ks), prefix="st"))
    assert shared.encoder == own.encoder and len(own.encoder) == 16
    for rec in records:
        own.observe(rec)
        shared.observe(rec)
        event = encode_event(own.vocab, rec)
        assert event.state is None  # encoded without a state: what a backfill writes
        wrong = np.full(own.state_size, 7.0, np.float32)
        for stream in own.ks:
            key = stream_key(stream, rec, event)
            bare.store.append(stream, key, event)
            foreign.store.append(stream, key, replace(event, state=wrong, encoder="other"))
    later = [{**r, "ts": r["ts"] + pd.Timedelta(minutes=1)} for r in records[-40:]]
    want = own.score_batch(later)
    assert np.abs(want - 0.5).max() > 0  # not a constant
    for scorer in (bare, foreign, shared):
        np.testing.assert_allclose(scorer.score_batch(later), want, rtol=1e-6, atol=1e-7)
    stored = shared.store.recent("card", stream_key("card", records[0]))
    assert all(e.encoder == own.encoder and e.state.shape == (own.state_size,) for e in stored)


def test_the_whole_graph_variant_scores_like_the_factored_pair(
    bundle: tuple[Path, Path, Path],
) -> None:
    """`model_file` runs the whole network on every event's features (the int8 and fp16
    variants are of that graph): it gives what the event and query graphs give."""
    data, _, out = bundle
    records = load_log(data).frame.head(300).to_dict("records")
    factored, whole = Scorer(out), Scorer(out, model_file="model.onnx")
    assert factored.factored and not whole.factored
    got, want = [], []
    for rec in records:
        got.append(factored.score(rec))
        want.append(whole.score(rec))
        factored.observe(rec)
        whole.observe(rec)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_each_route_is_scored_as_the_attempt_sent_through_it(
    bundle: tuple[Path, Path, Path],
) -> None:
    """`score_routes` builds the attempt's inputs once and changes only its route: each
    route's probability is the attempt's own score with that route (an unknown route: OOV),
    on the route graph and on the whole network alike, whatever the number of candidates
    (the route graph's inputs are kept bound per number, refilled per call)."""
    data, _, out = bundle
    frame = load_log(data).frame
    records = frame.head(260).to_dict("records")
    routes = [*sorted(frame["route"].unique()), "not_a_route"]
    assert len(routes) > 2
    for scorer in (Scorer(out), Scorer(out, model_file="model.onnx")):
        for rec in records[:200]:
            scorer.observe(rec)
        for i, rec in enumerate(records[200:]):
            candidates = routes if i % 2 else routes[-2:]
            got = scorer.score_routes(rec, candidates)
            want = [scorer.score({**rec, "route": r}) for r in candidates]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            assert np.ptp(got) > 0  # the route is read


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
    assert hard.action.name == "no_retry" and not any(hard.allowed.values())
    assert hard.rule in ("hard_decline", "visa_category_1", "mac_do_not_retry", "never_retry")
    wait = scorer.advise_retry({**base, "response_code": "51", "advice_code": "27"})  # 4 days
    assert [k for k, v in wait.allowed.items() if v] == ["4d", "7d"]
    assert wait.action.name in ("4d", "7d", "no_retry")
    assert set(wait.curve) == {"5m", "30m", "2h", "6h", "1d", "2d", "4d", "7d"}
    assert all(0 <= p <= 1 for p in wait.curve.values())
    checkout = {**base, "initiator": "CIT", "is_recurring": False}
    cit = scorer.advise_retry({**checkout, "response_code": "05", "advice_code": None})
    assert [k for k, v in cit.allowed.items() if v] == ["5m", "30m"]
    assert cit.action.name in ("5m", "30m", "no_retry")
    with pytest.raises(IssuerSeqError, match="approval"):
        scorer.advise_retry({**base, "response_code": "00"})


def test_the_rules_read_the_card_at_the_merchant_and_the_attempt_number(
    bundle: tuple[Path, Path, Path],
) -> None:
    scorer = Scorer(bundle[2])
    card = {**ATTEMPT, "card_id": "rules-1", "merchant_id": 777}
    day = 86_400

    def at(days: float) -> str:
        return str(np.datetime64("2026-02-01T10:00:00") + np.timedelta64(int(days * day), "s"))

    # MAC 03 (do not try again) at merchant 777, then more of the card's attempts elsewhere
    # than its own stream keeps: the block still holds at 777 for 30 days.
    scorer.observe({**card, "payment_id": "p0", "response_code": "05", "advice_code": "03"})
    for i in range(scorer.ks["card"] + 70):
        other = {**card, "merchant_id": 1000 + i, "ts": at(0.01 * (i + 1)), "payment_id": f"o{i}"}
        scorer.observe({**other, "response_code": "00", "advice_code": None})
    later = {**card, "ts": at(3), "payment_id": "p1", "response_code": "05", "advice_code": None}
    blocked = scorer.advise_retry(later)
    assert blocked.action.name == "no_retry" and blocked.rule == "mac_do_not_retry"
    assert not any(blocked.allowed.values())
    # Nothing stored for this card: the attempt number alone caps the reattempts.
    fresh = {**ATTEMPT, "card_id": "rules-2", "network": "visa", "payment_id": "p2"}
    capped = scorer.advise_retry({**fresh, "attempt": 16, "response_code": "51"})
    assert capped.action.name == "no_retry" and capped.rule == "visa_reattempt_cap"
    assert scorer.advise_retry({**fresh, "attempt": 2, "response_code": "51"}).rule != (
        "visa_reattempt_cap"
    )


def test_sca_declines_at_checkout_get_an_immediate_3ds_retry(
    bundle: tuple[Path, Path, Path],
) -> None:
    scorer = Scorer(bundle[2])
    checkout = {**ATTEMPT, "card_id": "sca-1", "initiator": "CIT", "is_recurring": False}
    decline = {**checkout, "network": "visa", "payment_id": "s1", "response_code": "1A"}
    advice = scorer.advise_retry(decline)
    # later without 3-D Secure cannot work (needs_3ds); at once with it is the way
    assert not any(advice.allowed.values())
    event = encode_event(scorer.vocab, decline)
    p, possible = scorer.now_with_3ds(decline, event, [])
    assert possible and 0.0 < p < 1.0
    econ = scorer.economics
    assert advice.action.name == "now_with_3ds" and advice.rule == "now_with_3ds"
    assert advice.expected_value == pytest.approx(p * 250.0 * econ.margin - econ.attempt_fee)
    # The decline itself is among the retry's histories, observed or not: the same answer.
    scorer.observe(decline)
    assert scorer.now_with_3ds(decline, event, []) == pytest.approx((p, True))
    # Not for a decline already sent with 3-D Secure, a merchant-initiated one, or another code.
    for other in (
        {**decline, "three_ds": True},
        {**decline, "initiator": "MIT"},
        {**decline, "response_code": "05"},
    ):
        assert scorer.now_with_3ds(other, encode_event(scorer.vocab, other), []) == (0.0, False)
        assert scorer.advise_retry(other).action.name != "now_with_3ds"


def test_an_empty_store_passed_in_is_the_one_used(bundle: tuple[Path, Path, Path]) -> None:
    store = MemoryStore({"card": 8, "issuer": 8, "route": 8, "card_merchant": 8})
    assert len(store) == 0  # falsy: the scorer must not replace it with its own
    scorer = Scorer(bundle[2], store=store)
    assert scorer.store is store
    scorer.observe({**ATTEMPT, "payment_id": "p", "response_code": "00", "advice_code": None})
    assert len(store) == 4  # the card, the issuer, the route and the card at the merchant


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


def test_single_requests_on_threads_score_as_one_batch(bundle: tuple[Path, Path, Path]) -> None:
    """A single attempt's query runs on inputs each thread keeps bound to the session and
    refills per request: requests scored at once on four threads, each one at a time, get
    what one batch of them gets (fresh inputs, no binding)."""
    data, _, out = bundle
    scorer = Scorer(out)
    records = load_log(data).frame.head(500).to_dict("records")
    for rec in records[:300]:
        scorer.observe(rec)
    queries = [{**rec, "response_code": None, "advice_code": None} for rec in records[300:]]
    expected = scorer.score_batch(queries)
    got: dict[int, list[float]] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            order = queries[i:] + queries[:i]  # each thread at another request at a time
            scores = [scorer.score(q) for q in order]
            got[i] = scores[len(queries) - i :] + scores[: len(queries) - i]
        except BaseException as exc:  # noqa: BLE001 - collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i * 37,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for scores in got.values():
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_single_scores_and_routes_run_through_their_bound_inputs(
    bundle: tuple[Path, Path, Path],
) -> None:
    """`score` and `score_routes` (up to `BOUND_ROUTES` candidates) run the graphs through
    the inputs bound once per thread, not through fresh ones; a batch takes fresh ones."""
    data, _, out = bundle
    scorer = Scorer(out)
    frame = load_log(data).frame
    records = frame.head(40).to_dict("records")
    routes = sorted(frame["route"].unique())
    bound = {"query": 0, "route": 0}

    def counting(name: str, run: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            bound[name] += 1
            return run(*args, **kwargs)

        return counted

    scorer.session.run_with_iobinding = counting("query", scorer.session.run_with_iobinding)
    scorer.route_session.run_with_iobinding = counting(
        "route", scorer.route_session.run_with_iobinding
    )
    for rec in records[:20]:
        scorer.score(rec)
        scorer.score_routes(rec, routes)
        scorer.observe(rec)
    assert bound == {"query": 20, "route": 20}
    scorer.score_batch(records[20:])
    assert bound == {"query": 20, "route": 20}
