"""A Redis outage under load: a real redis-server on loopback, stopped while requests arrive.

The service must keep answering (from its fallback), say that the state store failed (not
the model) in the answer, the log and the metrics, and score with the model again once Redis
is back. The app runs in process (FastAPI's TestClient); only 127.0.0.1 is used, and every
loop is bounded in count and time.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from issuer_seq.serve.app import create_app
from issuer_seq.serve.service import ServeSettings
from tests.redis_server import RedisServer
from tests.test_serve_app import attempt

ATTEMPT = attempt(card_id=4401, initiator="MIT")
DECLINE = {**ATTEMPT, "payment_id": "pay-4401", "response_code": "51", "advice_code": None}
EARLIER = {**DECLINE, "ts": "2026-01-19T10:00:00Z", "payment_id": "pay-4400"}
REQUESTS = [
    ("/v1/score", {"attempt": ATTEMPT}),
    ("/v1/retry", {"decline": DECLINE}),
    ("/v1/outcomes", {"outcomes": [EARLIER]}),
]


def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_redis_outage_is_named_survived_and_recovered_from(
    tiny_bundle: tuple[Path, Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    settings = ServeSettings(
        artifact_dir=tiny_bundle[2],
        state="redis",
        redis_url=redis_server.url,
        redis_prefix=f"outage{time.monotonic_ns()}",
        # generous: the store's failure, not a slow shared CPU, must decide the answers
        deadline_ms=2_000,
        warmup_runs=1,
    )
    caplog.set_level(logging.WARNING, logger="issuer_seq")
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            _wait(lambda: c.get("/v2/health/ready").status_code == 200, 60, "readiness")
            assert c.post("/v1/outcomes", json={"outcomes": [EARLIER]}).json() == {"observed": 1}
            assert c.post("/v1/score", json={"attempt": ATTEMPT}).json()["fallback"] is False

            # (sent at, path, status, body), from a sender that keeps going through the outage
            answers: list[tuple[float, str, int, dict[str, Any]]] = []
            done = threading.Event()

            def send() -> None:
                while not done.is_set() and len(answers) < 3_000:
                    for path, body in REQUESTS:
                        sent = time.monotonic()
                        r = c.post(path, json=body)
                        answers.append((sent, path, r.status_code, r.json()))

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            try:
                _wait(lambda: len(answers) >= 6, 30, "answers before the outage")
                redis_server.stop()
                stopped = time.monotonic()
                after = lambda: [a for a in answers if a[0] > stopped]  # noqa: E731
                _wait(lambda: len(after()) >= 30, 60, "answers during the outage")
                assert c.get("/v2/health/ready").status_code == 200  # still serving
            finally:
                done.set()
                sender.join(timeout=30)
            assert not sender.is_alive()

            during = [a for a in answers if a[0] > stopped]
            for _, path, status, body in during:
                if path == "/v1/outcomes":  # not stored: the client is told to resend
                    assert status == 503 and "state store failed" in body["error"], body
                    continue
                assert status == 200, (path, body)
                # the store failed, and the answer says so: not the model, not the deadline
                assert body["fallback"] is True, (path, body)
                assert body["fallback_reason"] == "state_unavailable", (path, body)
                if path == "/v1/retry":  # the network rules cannot be checked: no retry
                    assert body["action"] == "no_retry" and body["rule"] == "state_unavailable"
            assert all(a[3].get("fallback_reason") != "model_error" for a in answers)

            logged = [r.getMessage() for r in caplog.records]
            assert any("the state store failed" in m for m in logged), logged
            assert not any("the model call failed" in m for m in logged), logged
            text = c.get("/metrics").text
            for operation in ("score", "retry"):
                assert (
                    f'issuer_seq_fallbacks_total{{operation="{operation}",'
                    'reason="state_unavailable"}' in text
                )
            assert 'reason="model_error"' not in text
            assert 'issuer_seq_store_errors_total{operation="read"}' in text

            # Redis back (empty: it kept nothing): the model scores again
            redis_server.start()

            def model_answers() -> bool:
                body = c.post("/v1/score", json={"attempt": ATTEMPT}).json()
                return body["fallback"] is False

            _wait(model_answers, 30, "the model to score again after Redis restarted")
            retry = c.post("/v1/retry", json={"decline": DECLINE}).json()
            assert retry["fallback"] is False and retry["rule"] != "state_unavailable"
            assert c.post("/v1/outcomes", json={"outcomes": [EARLIER]}).json() == {"observed": 1}
    finally:
        redis_server.stop()
