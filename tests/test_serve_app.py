"""The HTTP service: a real `issuer-seq serve` on loopback, called with a real HTTP client.

The session's tiny bundle (simulate + train tiny + export, conftest) serves every test.
Fallback tests run the app in process (FastAPI's TestClient) with a monkeypatched session;
everything else talks to a server subprocess. Loops are bounded in count and time; only
127.0.0.1 is used.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, seed, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from issuer_seq import schema as log_schema
from issuer_seq.errors import IssuerSeqError
from issuer_seq.recalibration import RecalibrationSettings, RouteRecalibrationSettings, logit
from issuer_seq.serve import schemas as S
from issuer_seq.serve.app import create_app
from issuer_seq.serve.hot_path import HotPath
from issuer_seq.serve.inputs import Event, Window
from issuer_seq.serve.scorer import Scorer
from issuer_seq.serve.service import ServeSettings
from issuer_seq.serve.state import MemoryStore

MAX_BATCH = 64
MAX_BODY = 1_000_000


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tiny_bundle: tuple[Path, Path, Path]) -> Path:
    """The session's tiny bundle (conftest): simulated, trained tiny, exported."""
    return tiny_bundle[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _command() -> list[str]:
    script = Path(sys.executable).parent / "issuer-seq"
    return [str(script)] if script.exists() else [sys.executable, "-m", "issuer_seq.cli"]


class Server:
    def __init__(self, bundle: Path, log: Path, *overrides: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        args = [*_command(), "serve", f"artifact_dir={bundle}", f"port={self.port}"]
        with log.open("wb") as out:  # a file, not a pipe: a full pipe would stall the server
            self.proc = subprocess.Popen(
                [*args, "host=127.0.0.1", *overrides], stdout=out, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"server not ready within {timeout_s} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture(scope="module")
def server(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # A generous deadline: the load test shares 2 CPU cores with the rest of the suite.
    srv = Server(
        bundle,
        tmp_path_factory.mktemp("logs") / "serve.log",
        f"max_batch={MAX_BATCH}",
        f"max_body_bytes={MAX_BODY}",
        "deadline_ms=500",
        "shutdown_delay_s=0",
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        yield c


def attempt(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ts": "2026-01-20T10:00:00Z",
        "card_id": 901,
        "issuer_id": 3,
        "merchant_id": 7,
        "network": "visa",
        "card_type": "debit",
        "issuer_country": "DE",
        "mcc": "5411",
        "merchant_country": "DE",
        "amount": 25.0,
        "currency": "EUR",
        "initiator": "CIT",
        "is_recurring": False,
        "three_ds": True,
        "attempt": 1,
    }
    return {**base, **over}


def outcome(code: str = "00", advice: str | None = None, **over: Any) -> dict[str, Any]:
    row = attempt(**over)
    row.setdefault("payment_id", f"pay-{row['card_id']}-{row['ts']}")
    return {**row, "response_code": code, "advice_code": advice}


# -- the real server --------------------------------------------------------------------------
def test_health_and_model_metadata(client: httpx.Client, bundle: Path) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert client.get("/v2").json()["name"] == "issuer_seq"
    manifest = json.loads((bundle / "manifest.json").read_text())
    meta = client.get("/v2/models/issuer_seq").json()
    assert meta["name"] == "issuer_seq" and meta["versions"] == ["1"]
    assert [i["name"] for i in meta["inputs"]] == [i["name"] for i in manifest["schema"]["inputs"]]
    kinds = {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]}
    assert kinds["cur_mcc"] == ("INT64", [-1]) and kinds["card_log_amount"] == ("FP32", [-1, -1])
    grid = len(manifest["delay_grid"])
    assert meta["outputs"] == [
        {"name": "p_approve", "datatype": "FP32", "shape": [-1]},
        {"name": "p_retry", "datatype": "FP32", "shape": [-1, grid]},
    ]
    assert client.get("/v2/models/issuer_seq/versions/1").status_code == 200
    assert client.get("/v2/models/issuer_seq/ready").json()["ready"] is True
    assert client.get("/v2/models/other").status_code == 404
    assert client.get("/v2/models/issuer_seq/versions/7").status_code == 404


def test_score_matches_the_scorer_in_process(client: httpx.Client, bundle: Path) -> None:
    # Ids no other test (nor schemathesis) writes to: the server has no history for them.
    batch = [
        attempt(card_id=f"parity-{i}", issuer_id="parity", amount=5.0 + 40 * i) for i in range(5)
    ]
    one = client.post("/v1/score", json={"attempt": batch[0]})
    many = client.post("/v1/score", json={"attempts": batch})
    assert one.status_code == 200 and many.status_code == 200, many.text
    assert one.json()["fallback"] is False and many.json()["fallback_reason"] is None
    expected = Scorer(bundle).score_batch(batch)
    np.testing.assert_allclose(many.json()["p_approve"], expected, rtol=1e-5, atol=1e-6)
    assert one.json()["p_approve"] == pytest.approx([expected[0]], abs=1e-6)


def test_the_readme_example_works(client: httpx.Client) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("\n## Serving\n", 1)[1]
    payload = re.search(r"/v1/score -H 'content-type: application/json' -d '(.*?)'", section, re.S)
    assert payload is not None
    answer = client.post("/v1/score", json=json.loads(payload.group(1)))
    assert answer.status_code == 200 and answer.json()["fallback"] is False


def test_outcomes_feed_the_histories(client: httpx.Client) -> None:
    query = attempt(card_id="hist-1", issuer_id="hist", ts="2026-01-21T12:00:00Z")
    before = client.post("/v1/score", json={"attempt": query}).json()["p_approve"][0]
    declines = [
        outcome("51", card_id="hist-1", issuer_id="hist", ts=f"2026-01-21T0{h}:00:00Z")
        for h in range(4)
    ]
    answer = client.post("/v1/outcomes", json={"outcomes": declines})
    assert answer.status_code == 200 and answer.json() == {"observed": 4}
    after = client.post("/v1/score", json={"attempt": query}).json()["p_approve"][0]
    assert after != pytest.approx(before, abs=1e-7)  # the card's new history is read


def test_retry_advice_respects_the_network_rules(client: httpx.Client) -> None:
    mc = {"network": "mastercard", "initiator": "MIT", "is_recurring": True, "card_id": 3001}
    wait = client.post("/v1/retry", json={"decline": outcome("51", "27", **mc)})
    assert wait.status_code == 200, wait.text
    body = wait.json()
    assert body["fallback"] is False
    assert [k for k, v in body["allowed"].items() if v] == ["4d", "7d"]  # MAC 27: 4 days
    assert body["action"] in ("4d", "7d", "no_retry")
    if body["action"] != "no_retry":
        assert body["delay_s"] >= 4 * 86_400 and body["retry_at"].startswith("2026-01-2")
    assert all(0 <= p <= 1 for p in body["curve"].values()) and len(body["curve"]) == 8
    hard = client.post("/v1/retry", json={"decline": outcome("41", card_id=3002)}).json()
    assert hard["action"] == "no_retry" and hard["delay_s"] is None and hard["retry_at"] is None
    assert hard["rule"] in ("visa_category_1", "hard_decline", "never_retry")
    approved = client.post("/v1/retry", json={"decline": outcome("00", card_id=3003)})
    assert approved.status_code == 422 and "approval" in approved.json()["error"]


ROUTES = [
    {"route": "eu_domestic", "fee": 0.04},
    {"route": "global_a", "fee": 0.08},
    {"route": "global_b", "fee": 0.01},
]


def test_route_ranks_the_candidates_by_expected_value(client: httpx.Client, bundle: Path) -> None:
    from issuer_seq.retry_policy import DEFAULT_ECONOMICS

    query = attempt(card_id="route-1", issuer_id="route", amount=40.0)
    answer = client.post("/v1/route", json={"attempt": query, "routes": ROUTES})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["fallback"] is False and body["rule"] == "expected_value"
    assert body["propensity"] == 1.0  # no exploration by default
    by_name = {r["route"]: r for r in body["routes"]}
    assert sorted(by_name) == sorted(r["route"] for r in ROUTES)
    expected = Scorer(bundle).score_routes(query, [r["route"] for r in ROUTES])
    for candidate, p in zip(ROUTES, expected, strict=True):
        got = by_name[candidate["route"]]
        assert got["p_approve"] == pytest.approx(float(p), abs=1e-6)
        value = got["p_approve"] * 40.0 * DEFAULT_ECONOMICS.margin - candidate["fee"]
        assert got["expected_value"] == pytest.approx(value, abs=1e-9)
    values = [r["expected_value"] for r in body["routes"]]
    assert values == sorted(values, reverse=True) and body["choice"] == body["routes"][0]["route"]


@pytest.mark.parametrize(
    "routes",
    [
        [],
        [ROUTES[0], ROUTES[0]],
        [{"route": "a", "fee": -1.0}],
        [{"route": "a b", "fee": 0.0}],
        [{"route": "a", "fee": 0.0, "priority": 1}],
    ],
    ids=["none", "twice", "negative_fee", "bad_name", "unknown_field"],
)
def test_bad_route_requests_are_4xx(client: httpx.Client, routes: list[dict[str, Any]]) -> None:
    answer = client.post("/v1/route", json={"attempt": attempt(), "routes": routes})
    assert answer.status_code == 422 and "routes" in answer.text


def test_retry_advice_names_a_candidate_route(client: httpx.Client) -> None:
    technical = outcome("91", card_id="route-retry", route="global_a")
    with_routes = client.post("/v1/retry", json={"decline": technical, "routes": ROUTES}).json()
    assert with_routes["action"] != "no_retry", with_routes  # technical: retried at once
    assert with_routes["route"] in {r["route"] for r in ROUTES}
    alone = client.post("/v1/retry", json={"decline": technical}).json()
    assert alone["route"] == "global_a"  # no candidates: the decline's own route
    hard = client.post("/v1/retry", json={"decline": outcome("41", card_id=3009)}).json()
    assert hard["action"] == "no_retry" and hard["route"] is None


def _v2_request(bundle: Path, rows: slice) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    sample = np.load(bundle / "parity_sample.npz")
    inputs = []
    for spec in manifest["schema"]["inputs"]:
        x = sample[spec["name"]][rows]
        datatype = "INT64" if spec["dtype"] == "int64" else "FP32"
        inputs.append(
            {"name": spec["name"], "shape": list(x.shape), "datatype": datatype, "data": x.tolist()}
        )
    return {"id": "r1", "inputs": inputs}, {k: sample[k][rows] for k in ("p_approve", "p_retry")}


def test_v2_infer_matches_pytorch(client: httpx.Client, bundle: Path) -> None:
    request, expected = _v2_request(bundle, slice(0, 3))
    answer = client.post("/v2/models/issuer_seq/infer", json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_name"] == "issuer_seq" and body["id"] == "r1" and body["parameters"] == {}
    out = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in body["outputs"]}
    np.testing.assert_allclose(out["p_approve"], expected["p_approve"], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(out["p_retry"], expected["p_retry"], rtol=1e-3, atol=1e-5)
    only = client.post(
        "/v2/models/issuer_seq/versions/1/infer", json={**request, "outputs": [{"name": "p_retry"}]}
    )
    assert [o["name"] for o in only.json()["outputs"]] == ["p_retry"]


def _replace(request: dict[str, Any], name: str, **fields: Any) -> dict[str, Any]:
    inputs = [{**t, **fields} if t["name"] == name else t for t in request["inputs"]]
    return {**request, "inputs": inputs}


def test_v2_rejects_tensors_that_do_not_fit(client: httpx.Client, bundle: Path) -> None:
    request, _ = _v2_request(bundle, slice(0, 2))
    cases = {
        "missing input": {**request, "inputs": request["inputs"][1:]},
        "datatype FP32, expected INT64": _replace(request, "cur_mcc", datatype="FP32"),
        "ids must lie in": _replace(request, "cur_mcc", data=[10**6, 0]),
        "values for shape": _replace(request, "cur_mcc", data=[1]),
        "other inputs have": _replace(request, "cur_mcc", shape=[1], data=[1]),
        "data must be integers": _replace(request, "cur_mcc", data=["a", "b"]),
        "unknown input": {
            **request,
            "inputs": [*request["inputs"], {**request["inputs"][0], "name": "x"}],
        },
        "unknown output": {**request, "outputs": [{"name": "logits"}]},
        "asked for more than once": {**request, "outputs": [{"name": "p_retry"}] * 2},
        "binary tensor data is not supported": {
            **request,
            "parameters": {"binary_data_output": True},
        },
        "lengths must lie in": _replace(request, "card_length", data=[99999, 0]),
    }
    for message, body in cases.items():
        answer = client.post("/v2/models/issuer_seq/infer", json=body)
        assert answer.status_code == 400, (message, answer.text)
        assert message in answer.json()["error"], (message, answer.text)


BAD_SCORES: dict[str, tuple[Any, int, str]] = {
    "unknown field": ({"attempt": attempt(colour="red")}, 422, "colour"),
    "wrong type": ({"attempt": attempt(amount="25.0")}, 422, "amount"),
    "string for a bool": ({"attempt": attempt(three_ds="true")}, 422, "three_ds"),
    "negative amount": ({"attempt": attempt(amount=-1.0)}, 422, "amount"),
    "huge amount": ({"attempt": attempt(amount=1e300)}, 422, "amount"),
    "unknown network": ({"attempt": attempt(network="amex")}, 422, "network"),
    "unknown card type": ({"attempt": attempt(card_type="gold")}, 422, "card_type"),
    "unknown initiator": ({"attempt": attempt(initiator="BOT")}, 422, "initiator"),
    "bad mcc": ({"attempt": attempt(mcc="54")}, 422, "mcc"),
    "bad ts": ({"attempt": attempt(ts="yesterday")}, 422, "ts"),
    "ts out of range": ({"attempt": attempt(ts="1900-01-01T00:00:00Z")}, 422, "ts"),
    "attempt zero": ({"attempt": attempt(attempt=0)}, 422, "attempt"),
    "retry without its payment": ({"attempt": attempt(attempt=2)}, 422, "payment_id"),
    "outcome on a score": ({"attempt": outcome("05")}, 422, "response_code"),
    "both": ({"attempt": attempt(), "attempts": [attempt()]}, 422, "exactly one"),
    "neither": ({}, 422, "exactly one"),
    "empty batch": ({"attempts": []}, 422, "attempts"),
    "oversized batch": ({"attempts": [attempt()] * (MAX_BATCH + 1)}, 422, f"{MAX_BATCH}"),
    "not an object": ([attempt()], 422, "body"),
}


@pytest.mark.parametrize("case", list(BAD_SCORES))
def test_bad_scores_are_4xx_naming_the_problem(client: httpx.Client, case: str) -> None:
    body, status, needle = BAD_SCORES[case]
    answer = client.post("/v1/score", json=body)
    assert answer.status_code == status, answer.text
    assert needle in answer.json()["error"], answer.text


def test_rejected_values_are_not_echoed(client: httpx.Client) -> None:
    for ts in ("Mon, 02 Mar 2026 card 4111", "2026-13-45T99:00:00Z"):
        answer = client.post("/v1/score", json={"attempt": attempt(ts=ts)})
        assert answer.status_code == 422 and "ts is not a valid time" in answer.text
        assert ts not in answer.text and "4111" not in answer.text


def test_unreadable_requests_are_4xx(client: httpx.Client) -> None:
    headers = {"content-type": "application/json"}
    raw = json.dumps({"attempt": attempt()})
    cases = [
        (raw[:40], headers, 400, "not valid JSON"),
        (raw.replace("25.0", "NaN"), headers, 422, "finite"),
        (raw.replace("25.0", "1e999"), headers, 422, "finite"),
        (raw.replace("25.0", "-Infinity"), headers, 422, "amount"),
        (raw, {"content-type": "text/plain"}, 415, "application/json"),
        (raw, {}, 415, "application/json"),
        ("x" * (MAX_BODY + 10), headers, 413, ""),
    ]
    for content, hdrs, status, needle in cases:
        answer = client.post("/v1/score", content=content, headers=hdrs)
        assert answer.status_code == status, (content[:60], answer.text)
        assert needle in answer.json()["error"], answer.text
    bad_outcome = client.post("/v1/outcomes", json={"outcomes": [outcome("5")]})
    assert bad_outcome.status_code == 422 and "response_code" in bad_outcome.json()["error"]
    anonymous = {k: v for k, v in outcome("51").items() if k != "payment_id"}
    no_payment = client.post("/v1/outcomes", json={"outcomes": [anonymous]})
    assert no_payment.status_code == 422 and "payment_id" in no_payment.json()["error"]
    no_payment = client.post("/v1/retry", json={"decline": anonymous})
    assert no_payment.status_code == 422 and "payment_id" in no_payment.json()["error"]
    assert client.get("/v1/nowhere").status_code == 404
    assert client.get("/v1/score").status_code == 405


def test_metrics_count_requests_latency_and_fallbacks(client: httpx.Client) -> None:
    client.post("/v1/score", json={"attempt": attempt()})
    headers = {"content-type": "application/json"}
    assert client.post("/v1/score", content="x" * (MAX_BODY + 10), headers=headers).status_code == (
        413
    )
    text = client.get("/metrics").text
    assert 'issuer_seq_http_requests_total{method="POST",route="/v1/score",status="200"}' in text
    # answered before routing, still counted under its route
    assert 'issuer_seq_http_requests_total{method="POST",route="/v1/score",status="413"}' in text
    assert 'issuer_seq_http_request_duration_seconds_bucket{le="0.05",method="POST"' in text
    assert 'issuer_seq_model_duration_seconds_count{operation="score"}' in text
    assert "# TYPE issuer_seq_fallbacks_total counter" in text
    assert "issuer_seq_ready 1.0" in text


# -- schemathesis: generated requests against the OpenAPI schema ------------------------------
OPERATIONS = [
    ("POST", "/v1/score"),
    ("POST", "/v1/route"),
    ("POST", "/v1/retry"),
    ("POST", "/v1/outcomes"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2"),
    ("GET", "/v2/models/{model_name}"),
    ("GET", "/v2/models/{model_name}/versions/{model_version}"),
    ("GET", "/v2/models/{model_name}/ready"),
    ("POST", "/v2/models/{model_name}/infer"),
    ("POST", "/v2/models/{model_name}/versions/{model_version}/infer"),
    ("GET", "/metrics"),
]


@pytest.fixture(scope="module")
def api_schema(server: Server) -> Any:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    listed = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert listed == set(OPERATIONS)  # a new route joins this run
    return schema


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_openapi_schema_holds_for_generated_requests(
    api_schema: Any, method: str, path: str
) -> None:
    """Seeded valid and invalid requests: never a 5xx, every answer as the schema says."""
    operation = api_schema[path][method]
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    modes = [(GenerationMode.POSITIVE, 30)]
    if operation.body:  # (any text is a valid path parameter: nothing else can be invalid)
        modes.append((GenerationMode.NEGATIVE, 15))
    for mode, examples in modes:

        @given(case=operation.as_strategy(generation_mode=mode))
        @seed(20260128)
        @settings(
            max_examples=examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            phases=[Phase.generate],
        )
        def check(case: Any) -> None:
            case.call_and_validate(checks=checks, timeout=10)

        check()


# -- load: a fixed request rate on loopback ---------------------------------------------------
def test_load_at_a_fixed_rate(server: Server) -> None:
    rate, seconds = 50, 5.0
    n = int(rate * seconds)

    async def run() -> tuple[list[float], list[int], int]:
        latencies: list[float] = []
        statuses: list[int] = []
        fallbacks = 0
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=5.0, limits=limits) as c:
            start = time.perf_counter()

            async def one(i: int) -> None:
                nonlocal fallbacks
                # Open loop: each request leaves at its slot whatever the earlier ones do.
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                body = {"attempt": attempt(card_id=5000 + i % 97, issuer_id=3 + i % 5)}
                t0 = time.perf_counter()
                try:
                    answer = await c.post("/v1/score", json=body)
                    statuses.append(answer.status_code)
                    fallbacks += bool(answer.status_code == 200 and answer.json()["fallback"])
                except httpx.HTTPError:
                    statuses.append(0)
                latencies.append(time.perf_counter() - t0)

            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), seconds + 20)
        return latencies, statuses, fallbacks

    latencies, statuses, fallbacks = asyncio.run(run())
    ms = np.percentile(np.array(latencies) * 1000, [50, 95, 99])
    errors = sum(s != 200 for s in statuses) / len(statuses)
    print(
        f"\nload: {n} x POST /v1/score at {rate} req/s: p50 {ms[0]:.1f} ms, p95 {ms[1]:.1f} ms, "
        f"p99 {ms[2]:.1f} ms, error rate {errors:.3f}, fallbacks {fallbacks}"
    )
    assert len(statuses) == n and errors == 0


# -- fail open, in process ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def shared_scorer(bundle: Path) -> Scorer:
    return Scorer(bundle)


def _in_process(bundle: Path, scorer: Scorer | None, **over: Any) -> TestClient:
    options: dict[str, Any] = {"deadline_ms": 100, "warmup_runs": 1, **over}
    settings_ = ServeSettings(artifact_dir=bundle, **options)
    # The last-resort handler answers and then re-raises (so servers log it): keep the answer.
    return TestClient(create_app(settings_, scorer=scorer), raise_server_exceptions=False)


def _wait_ready(c: TestClient) -> None:
    for _ in range(200):
        if c.get("/v2/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    pytest.fail("in-process app not ready")


def test_the_service_recalibrates_to_the_outcomes_of_what_it_scored(bundle: Path) -> None:
    """With `recalibration` on, /v1/outcomes of attempts /v1/score answered feed the
    intercept, and the next step's scores carry it."""
    settings = RecalibrationSettings(window_h=24, step_h=1, min_outcomes=1)
    with _in_process(bundle, None, recalibration=settings) as c:
        _wait_ready(c)
        scorer = c.app.state.service.scorer  # type: ignore[attr-defined]
        assert scorer.recalibration is not None
        c.post("/v1/score", json={"attempt": attempt(card_id=990)})
        declined = outcome("51", card_id=990)
        unscored = outcome("51", card_id=991)  # not scored here: not recorded
        assert c.post("/v1/outcomes", json={"outcomes": [declined, unscored]}).json() == {
            "observed": 2
        }
        later = attempt(card_id=992, ts="2026-01-20T11:30:00Z")
        c.post("/v1/score", json={"attempt": later})
        follow = scorer.recalibration.intercept
        assert follow.fitted_on == 1 and follow.value < 0
        text = c.get("/metrics").text
        assert f"issuer_seq_recalibration_intercept {follow.value}" in text
        assert "issuer_seq_recalibration_outcomes 1.0" in text


def test_the_service_recalibrates_each_issuer_x_route_to_its_outcomes(bundle: Path) -> None:
    """With `route_recalibration` on, the outcome of an attempt /v1/route answered, through
    the route it went, feeds that issuer x route's intercept; the next step's candidates
    through it carry the intercept, the issuer's other routes none."""
    settings = RouteRecalibrationSettings(window_h=24, step_h=1, prior_sd=1.0)
    with _in_process(bundle, None, route_recalibration=settings) as c:
        _wait_ready(c)
        scorer = c.app.state.service.scorer  # type: ignore[attr-defined]
        assert scorer.route_recalibration is not None
        routed = attempt(card_id=990, issuer_id="rr")
        c.post("/v1/route", json={"attempt": routed, "routes": ROUTES})
        declined = outcome("51", card_id=990, issuer_id="rr", route="global_a")
        unscored = outcome("51", card_id=991, issuer_id="rr", route="global_a")
        assert c.post("/v1/outcomes", json={"outcomes": [declined, unscored]}).json() == {
            "observed": 2
        }
        later = attempt(card_id=992, issuer_id="rr", ts="2026-01-20T11:30:00Z")
        answered = {
            r["route"]: r["p_approve"]
            for r in c.post("/v1/route", json={"attempt": later, "routes": ROUTES}).json()["routes"]
        }
        pairs = scorer.route_recalibration.intercepts
        assert pairs.fitted_on == 1 and list(pairs.values) == [("rr", "global_a")]
        bias = pairs.values[("rr", "global_a")]
        assert bias < 0
        # the same scorer without it: only global_a moves, by the intercept
        follow, scorer.route_recalibration = scorer.route_recalibration, None
        names = [r["route"] for r in ROUTES]
        raw = dict(zip(names, scorer.score_routes(later, names), strict=True))
        scorer.route_recalibration = follow
        for name in names:
            moved = bias if name == "global_a" else 0.0
            assert logit(answered[name]) == pytest.approx(logit(raw[name]) + moved, abs=1e-4)
        text = c.get("/metrics").text
        assert "issuer_seq_route_recalibration_pairs 1.0" in text
        assert "issuer_seq_route_recalibration_outcomes 1.0" in text


def test_slow_model_falls_back_within_the_deadline(
    bundle: Path, shared_scorer: Scorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    prior = manifest["training_metrics"]["dataset"]["train"]["approval_rate"]
    with _in_process(bundle, shared_scorer, max_pending=1) as c:
        _wait_ready(c)
        release = threading.Event()
        real = shared_scorer.run

        def slow(inputs: Any) -> Any:
            release.wait(2.0)  # bounded: the worker frees itself even if the test fails
            return real(inputs)

        monkeypatch.setattr(shared_scorer, "run", slow)
        t0 = time.perf_counter()
        answer = c.post("/v1/score", json={"attempt": attempt(issuer_id="fresh-issuer")}).json()
        took = time.perf_counter() - t0
        assert answer["fallback"] is True and answer["fallback_reason"] == "deadline"
        assert took < 0.9, took  # deadline 100 ms, the model would take 2 s
        assert answer["p_approve"] == [pytest.approx(prior)]  # no events: the global prior
        # The issuer's recent events move the fallback rate (3 declines, shrunk to the prior).
        events = [outcome("05", issuer_id="fresh-issuer", ts="2026-01-19T10:00:00Z")] * 3
        assert c.post("/v1/outcomes", json={"outcomes": events}).json() == {"observed": 3}
        # The slow call still holds the only slot (max_pending=1): no queueing behind it.
        rate = c.post("/v1/score", json={"attempt": attempt(issuer_id="fresh-issuer")}).json()
        assert rate["fallback_reason"] == "overloaded"
        assert rate["p_approve"] == [pytest.approx((0 + 5 * prior) / (3 + 5))]
        release.set()
        text = c.get("/metrics").text
        assert 'issuer_seq_fallbacks_total{operation="score",reason="deadline"} 1.0' in text
        assert 'issuer_seq_fallbacks_total{operation="score",reason="overloaded"} 1.0' in text


def test_failing_model_falls_back_to_the_rules(
    bundle: Path, shared_scorer: Scorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _in_process(bundle, shared_scorer) as c:
        _wait_ready(c)

        def broken(inputs: Any) -> Any:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

        monkeypatch.setattr(shared_scorer, "run", broken)  # the query graph
        monkeypatch.setattr(shared_scorer, "run_routes", broken)  # the route graph
        monkeypatch.setattr(shared_scorer, "run_whole", broken)  # the whole network (V2)
        score = c.post("/v1/score", json={"attempts": [attempt(), attempt()]}).json()
        assert score["fallback_reason"] == "model_error" and len(score["p_approve"]) == 2

        def advise(code: str, advice: str | None = None, **over: Any) -> dict[str, Any]:
            answer = c.post("/v1/retry", json={"decline": outcome(code, advice, **over)})
            assert answer.status_code == 200, answer.text
            body: dict[str, Any] = answer.json()
            assert body["fallback"] is True and body["fallback_reason"] == "model_error"
            return body

        assert advise("91")["action"] == "30m"  # technical, within the checkout session
        checkout = advise("51")  # a customer-initiated payment cannot wait for funds
        assert checkout["action"] == "no_retry" and checkout["rule"] == "cit_session"
        assert [k for k, v in checkout["allowed"].items() if v] == ["5m", "30m"]
        funds = advise("51", initiator="MIT")
        assert funds["action"] == "2d" and funds["rule"] == "code_rule_funds"
        assert funds["delay_s"] == 2 * 86_400 and funds["retry_at"] == "2026-01-22T10:00:00Z"
        assert advise("05", initiator="MIT")["action"] == "1d"  # generic
        sca = advise("1A", three_ds=False)  # Visa SCA at checkout: at once, with 3-D Secure
        assert sca["action"] == "now_with_3ds" and sca["rule"] == "code_rule_sca_3ds"
        assert sca["delay_s"] == 20 and sca["expected_value"] > 0
        assert advise("1A")["action"] == "no_retry"  # it was sent with 3-D Secure already
        mac = advise("51", "27", network="mastercard", initiator="MIT", is_recurring=True)
        assert mac["action"] == "4d"  # the MAC's 4-day wait beats the 2-day funds rule
        assert [k for k, v in mac["allowed"].items() if v] == ["4d", "7d"]
        for hard in ("41", "54"):  # lost card (hard), expired card (data)
            body = advise(hard)
            assert body["action"] == "no_retry" and body["expected_value"] == 0.0
            assert not any(body["allowed"].values()) and body["rule"] != "ok"
        route = c.post("/v1/route", json={"attempt": attempt(), "routes": ROUTES}).json()
        assert route["fallback_reason"] == "model_error" and route["rule"] == "static_priority"
        assert route["choice"] == ROUTES[0]["route"] and route["propensity"] == 1.0
        retry = {"decline": outcome("91", route="gone"), "routes": ROUTES}
        cascade = c.post("/v1/retry", json=retry).json()
        assert cascade["fallback"] is True and cascade["route"] == ROUTES[0]["route"]
        request, _ = _v2_request(bundle, slice(0, 2))
        v2 = c.post("/v2/models/issuer_seq/infer", json=request).json()
        assert v2["parameters"] == {"fallback": True, "fallback_reason": "model_error"}
        assert [o["shape"] for o in v2["outputs"]] == [[2], [2, 8]]


def test_workers_0_answers_on_the_event_loop_late_rather_than_from_the_fallback(
    bundle: Path, shared_scorer: Scorer
) -> None:
    # No pool: the call runs where the request is handled, so it cannot be cut at the deadline;
    # a slow one is still the model's answer, counted as late.
    with _in_process(bundle, shared_scorer, workers=0, debug_model_delay_ms=150.0) as c:
        _wait_ready(c)
        service = c.app.state.service  # type: ignore[attr-defined]
        assert service.model_pool is None
        t0 = time.perf_counter()
        answer = c.post("/v1/score", json={"attempt": attempt()}).json()
        assert time.perf_counter() - t0 >= 0.15
        assert answer["fallback"] is False
        late = service.metrics.late_answers.labels("score")._value.get()
        assert late == 1
        assert "issuer_seq_late_answers_total" in c.get("/metrics").text
    with pytest.raises(IssuerSeqError, match="workers must be >= 0"):
        _in_process(bundle, shared_scorer, workers=-1)


def test_the_fallback_reads_the_histories_the_service_keeps(bundle: Path) -> None:
    # The service loads its own scorer (state=memory): the fallback must see the same store.
    with _in_process(bundle, None, debug_model_delay_ms=400.0) as c:
        _wait_ready(c)
        mc = {"network": "mastercard", "initiator": "MIT", "merchant_id": 777, "card_id": 31}
        posted = c.post("/v1/outcomes", json={"outcomes": [outcome("05", "03", **mc)]})
        assert posted.json() == {"observed": 1}
        later = outcome("05", ts="2026-01-23T10:00:00Z", payment_id="pay-later", **mc)
        body = c.post("/v1/retry", json={"decline": later}).json()
        assert body["fallback"] is True and body["fallback_reason"] == "deadline"
        assert body["action"] == "no_retry" and body["rule"] == "mac_do_not_retry"
        assert not any(body["allowed"].values())
        # A retry worth less than its fee is not advised, by the rules either.
        cents = outcome("91", amount=0.01, initiator="MIT", card_id=32)
        tiny = c.post("/v1/retry", json={"decline": cents}).json()
        assert tiny["fallback"] is True
        assert tiny["action"] == "no_retry" and tiny["rule"] == "not_worth_it"
        assert tiny["expected_value"] == 0.0


def test_an_unreadable_store_means_no_retry(bundle: Path) -> None:
    class Down(MemoryStore):
        def recent(self, stream: str, key: str) -> list[Event]:
            raise ConnectionError("state store unreachable")

        def window(self, stream: str, key: str, cutoff: int, k: int) -> Window:
            raise ConnectionError("state store unreachable")

    scorer = Scorer(bundle, store=Down({"card": 40, "issuer": 40, "card_merchant": 40}))
    with _in_process(bundle, scorer) as c:
        _wait_ready(c)
        body = c.post("/v1/retry", json={"decline": outcome("51", initiator="MIT")}).json()
        # the store failed, not the model: the answer says which
        assert body["fallback"] is True and body["fallback_reason"] == "state_unavailable"
        assert body["action"] == "no_retry" and body["rule"] == "state_unavailable"
        assert not any(body["allowed"].values())
        score = c.post("/v1/score", json={"attempt": attempt()}).json()
        assert score["fallback"] is True and score["fallback_reason"] == "state_unavailable"
        text = c.get("/metrics").text
        retry_fallbacks = 'issuer_seq_fallbacks_total{operation="retry",reason="state_unavailable"}'
        assert f"{retry_fallbacks} 1.0" in text
        assert 'reason="model_error"' not in text


def test_non_probabilities_and_unexpected_errors_fall_back(
    bundle: Path, shared_scorer: Scorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _in_process(bundle, shared_scorer) as c:
        _wait_ready(c)
        real = shared_scorer.run
        monkeypatch.setattr(shared_scorer, "run", lambda x: (real(x)[0] * np.nan, real(x)[1]))
        nan = c.post("/v1/score", json={"attempt": attempt()}).json()
        assert nan["fallback_reason"] == "invalid_output"
        real_routes = shared_scorer.run_routes
        monkeypatch.setattr(shared_scorer, "run_routes", lambda x: real_routes(x) * np.nan)
        nan = c.post("/v1/route", json={"attempt": attempt(), "routes": ROUTES}).json()
        assert nan["fallback_reason"] == "invalid_output" and nan["rule"] == "static_priority"

        async def bug(*args: Any, **kwargs: Any) -> Any:
            raise KeyError("a bug outside the model call")

        service = c.app.state.service  # type: ignore[attr-defined]
        monkeypatch.setattr(service, "call_model", bug)
        last = c.post("/v1/score", json={"attempt": attempt()})
        assert last.status_code == 200 and last.json()["fallback_reason"] == "unhandled_error"
        retry = c.post("/v1/retry", json={"decline": outcome("51")})
        assert retry.status_code == 200 and retry.json()["fallback_reason"] == "unhandled_error"


def test_the_hot_path_answers_exactly_as_fastapi_does(bundle: Path, shared_scorer: Scorer) -> None:
    """/v1/score and /v1/route skip FastAPI's machinery (serve/hot_path.py): every answer, good
    or bad, is the one FastAPI's own route gives (`hot_path=false`), and both are counted."""
    requests = [
        ("/v1/score", {"attempt": attempt()}),
        ("/v1/score", {"attempts": [attempt(), attempt(amount=900.0, card_id="hot-2")]}),
        ("/v1/route", {"attempt": attempt(amount=40.0), "routes": ROUTES}),
        ("/v1/route", {"attempt": attempt(), "routes": [ROUTES[0], ROUTES[0]]}),
        *(("/v1/score", body) for body, _, _ in BAD_SCORES.values()),
    ]
    raw = json.dumps({"attempt": attempt()})
    unreadable = [
        (raw[:40], {"content-type": "application/json"}),
        (raw.replace("25.0", "NaN"), {"content-type": "application/json"}),
        (raw, {"content-type": "text/plain"}),
        (raw, {"content-type": "application/vnd.issuer+json"}),
    ]
    # A generous deadline: a batch past 100 ms on a loaded machine would fall back on one path
    # and not the other, and the answers compared are the model's.
    slow = {"max_body_bytes": MAX_BODY, "deadline_ms": 10_000}
    with (
        _in_process(bundle, shared_scorer, **slow) as hot,
        _in_process(bundle, shared_scorer, **slow, hot_path=False) as plain,
    ):
        _wait_ready(hot)
        _wait_ready(plain)
        layers = [[m.cls for m in c.app.user_middleware] for c in (hot, plain)]  # type: ignore[attr-defined]
        assert HotPath in layers[0] and HotPath not in layers[1]
        for path, body in requests:
            a, b = hot.post(path, json=body), plain.post(path, json=body)
            assert (a.status_code, a.json()) == (b.status_code, b.json()), (path, body)
        for content, headers in unreadable:
            a = hot.post("/v1/score", content=content, headers=headers)
            b = plain.post("/v1/score", content=content, headers=headers)
            assert (a.status_code, a.json()) == (b.status_code, b.json()), content[:60]

        def chunks() -> Iterator[bytes]:  # a body that announces no length
            for _ in range(MAX_BODY // 1024 + 2):
                yield b" " * 1024

        json_type = {"content-type": "application/json"}
        a = hot.post("/v1/score", content=chunks(), headers=json_type)
        b = plain.post("/v1/score", content=chunks(), headers=json_type)
        assert a.status_code == 413 and (a.status_code, a.json()) == (b.status_code, b.json())
        for c in (hot, plain):
            text = c.get("/metrics").text
            for path, status in (("/v1/score", 200), ("/v1/route", 200), ("/v1/score", 422)):
                labels = f'method="POST",route="{path}",status="{status}"'
                assert f"issuer_seq_http_requests_total{{{labels}}}" in text, (labels, c is hot)


def test_ready_only_after_warm_up(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from issuer_seq.serve.service import Service

    gate = threading.Event()
    real = Service._warm_up

    def held(self: Service, scorer: Scorer) -> None:
        gate.wait(10.0)
        real(self, scorer)

    monkeypatch.setattr(Service, "_warm_up", held)
    with _in_process(bundle, None) as c:
        not_yet = c.get("/v2/health/ready")
        assert not_yet.status_code == 503 and "loading" in not_yet.json()["reason"]
        assert c.get("/v2/health/live").status_code == 200
        early = c.post("/v1/score", json={"attempt": attempt()}).json()
        assert early["fallback_reason"] == "not_ready"
        assert c.post("/v1/outcomes", json={"outcomes": [outcome()]}).status_code == 503
        gate.set()
        _wait_ready(c)


# -- lifecycle of the real process ---------------------------------------------------------------
def test_sigterm_flips_readiness_drains_and_exits_0(bundle: Path, tmp_path: Path) -> None:
    srv = Server(
        bundle,
        tmp_path / "drain.log",
        "deadline_ms=10000",
        "debug.model_delay_ms=1500",  # every model call takes 1.5 s: one stays in flight
        "shutdown_delay_s=0.5",
    )
    try:
        srv.wait_ready()
        result: dict[str, Any] = {}

        def slow_request() -> None:
            answer = httpx.post(f"{srv.url}/v1/score", json={"attempt": attempt()}, timeout=20)
            result["status"], result["body"] = answer.status_code, answer.json()

        worker = threading.Thread(target=slow_request)
        worker.start()
        time.sleep(0.3)  # the request is in the model now
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        ready = httpx.get(f"{srv.url}/v2/health/ready", timeout=5)
        assert ready.status_code == 503 and ready.json()["reason"] == "shutting down"
        worker.join(timeout=20)
        assert result.get("status") == 200, srv.output()
        assert result["body"]["fallback"] is False  # answered by the model, not cut off
        assert srv.proc.wait(timeout=20) == 0, srv.output()
    finally:
        srv.stop()


def test_a_bad_bundle_stops_the_command_with_status_2(bundle: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    with (tampered / "model.onnx").open("r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    port = _free_port()
    done = subprocess.run(
        [*_command(), "serve", f"artifact_dir={tampered}", f"port={port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "model.onnx has sha256" in done.stdout + done.stderr


def test_the_serving_process_never_loads_torch(server: Server) -> None:
    maps = Path(f"/proc/{server.proc.pid}/maps")
    if not maps.exists():
        pytest.skip("needs Linux /proc to list the server's loaded libraries")
    text = maps.read_text()
    assert "onnxruntime" in text and "libtorch" not in text


def test_the_server_runs_uvloop_and_httptools_on_a_frozen_start_up_heap(server: Server) -> None:
    """uvicorn's standard extras (pyproject.toml) are what `loop=auto http=auto` picks, and
    the start-up's objects are kept out of the garbage collector's full collections."""
    text = server.log.read_text(errors="replace")
    assert "event loop uvloop.Loop, HTTP protocol HttpToolsProtocol" in text, text[-2000:]
    frozen = re.search(r"(\d+) objects of the start-up frozen out of garbage collection", text)
    assert frozen is not None and int(frozen.group(1)) > 10_000, text[-2000:]


def test_request_enums_are_the_contracts() -> None:
    assert set(S.Network.__args__) == set(log_schema.NETWORKS)  # type: ignore[attr-defined]
    assert set(S.CardType.__args__) == set(log_schema.CARD_TYPES)  # type: ignore[attr-defined]
    assert set(S.Initiator.__args__) == set(log_schema.INITIATORS)  # type: ignore[attr-defined]


def test_redis_state_is_shared_by_replicas(bundle: Path, redis_url: str) -> None:
    import redis

    prefix = f"t{os.getpid()}_{time.monotonic_ns()}"
    common = {"state": "redis", "redis_url": redis_url, "redis_prefix": prefix}
    with _in_process(bundle, None, **common) as a, _in_process(bundle, None, **common) as b:
        _wait_ready(a)
        _wait_ready(b)
        query = {"attempt": attempt(card_id=7001, ts="2026-01-22T10:00:00Z")}
        before = b.post("/v1/score", json=query).json()["p_approve"][0]
        history = [outcome("51", card_id=7001, ts=f"2026-01-22T0{h}:00:00Z") for h in range(3)]
        assert a.post("/v1/outcomes", json={"outcomes": history}).json() == {"observed": 3}
        after = b.post("/v1/score", json=query).json()["p_approve"][0]
        assert after != pytest.approx(before, abs=1e-7)  # replica b reads what a wrote
    assert redis.Redis.from_url(redis_url).zcard(f"{prefix}:t:card:7001") == 3
