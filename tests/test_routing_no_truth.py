"""Routing evaluation of a user's real log: routes and propensities, but no truth.parquet and
no meta.json. The route table comes from a routes file or the log; every policy gets
off-policy estimates only, checked here against the truth the simulator kept aside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from issuer_seq.errors import IssuerSeqError
from issuer_seq.evaluate.routing import evaluate_routing
from issuer_seq.routing import NOT_HELD, RouteTable, truth_matrix, value_policies
from issuer_seq.routing.route_source import (
    check_logged_routes,
    infer_merchant_routes,
    read_routes_file,
    resolve_routes,
)
from issuer_seq.schema import load_log
from tests.conftest import report_with_routing

N_BOOT = 200


class RealLog:
    """A simulated routed log as a user holds it: transactions.parquet alone (copied away from
    its truth and meta.json), split by time into `history` and `test`; the simulator's truth
    and meta kept aside (`truth`, `meta`) to check the estimates."""

    def __init__(self, sim: Path, alone: Path) -> None:
        alone.mkdir()
        shutil.copy(sim / "transactions.parquet", alone / "transactions.parquet")
        frame = load_log(alone).frame
        cut = frame["ts"].quantile(0.7)
        test = (frame["ts"] >= cut).to_numpy()
        self.frame = frame
        self.history = frame[~test].reset_index(drop=True)
        self.test = frame[test].reset_index(drop=True)
        self.meta: dict[str, Any] = json.loads((sim / "meta.json").read_text())
        truth = pd.read_parquet(sim / "truth.parquet").set_index("txn_id")
        self.truth = truth.loc[self.test["txn_id"]].reset_index()
        self.routes = resolve_routes(self.history, self.test)
        table = self.routes.table
        cand = table.candidates(self.test["merchant_id"])
        # the truth through the routes the inferred table holds (the others are no choice)
        self.p_true = np.where(cand, truth_matrix(self.truth, table.names), np.nan)
        rng = np.random.default_rng(3)
        noisy = np.clip(self.p_true + rng.normal(0.0, 0.05, self.p_true.shape), 0.0, 1.0)
        self.noisy = np.where(cand, noisy, np.nan)

    def run(self, **kw: Any) -> dict[str, Any]:
        args: dict[str, Any] = {
            "predictors": {"noisy": self.noisy},
            "history": self.history,
            "n_bootstrap": N_BOOT,
            "routes": self.routes,
        }
        return evaluate_routing(self.test, None, {}, **(args | kw))


@pytest.fixture(scope="module")
def real(sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RealLog:
    return RealLog(sim_dir, tmp_path_factory.mktemp("real") / "log")


@pytest.fixture(scope="module")
def section(real: RealLog) -> dict[str, Any]:
    return real.run()


def test_without_truth_the_section_is_off_policy_only(section: dict[str, Any]) -> None:
    assert section["applicable"] and section["mode"] == "off_policy_only"
    assert section["note"].startswith("off-policy estimates only")
    assert list(section["policies"]) == ["static", "success_rate", "noisy"]  # no oracle
    assert "reaction" not in section and "dr_covers" not in section
    ope = pd.DataFrame(section["ope"])
    assert len(ope) == 3 * 2 * 3  # policies x rewards x estimators
    assert not {"truth", "covers", "error", "why"} & set(ope.columns)
    for col in ("estimate", "low", "high", "effective_sample_size"):
        assert np.isfinite(ope[col].to_numpy(float)).all(), col
    assert ((ope["low"] <= ope["estimate"]) & (ope["estimate"] <= ope["high"])).all()
    assert (ope["high"] > ope["low"]).all()
    # the logging policy's own value: the mean logged outcome
    logged = section["logged"]
    assert logged["approval"]["low"] < logged["approval"]["value"] < logged["approval"]["high"]
    assert logged["value"]["low"] < logged["value"]["value"] < logged["value"]["high"]
    # the table came from the log: no fees known, every merchant inferred, and it says so
    assert section["route_table"]["source"].startswith("the log")
    notes = " ".join(section["route_table"]["notes"])
    assert "no fees known" in notes and "inferred from the log" in notes
    assert all(r["fee"] == 0.0 for r in section["routes"])
    json.dumps(section, allow_nan=False)


def test_static_snips_recovers_the_truth_valued_static_policy(
    real: RealLog, section: dict[str, Any]
) -> None:
    """The logging policy sends most attempts through the merchant's first route, so static
    routing is well supported: its SNIPS estimate must land on what the dropped truth gives."""
    table = real.routes.table
    prio = table.priority(real.test["merchant_id"])
    amount = real.test["amount"].to_numpy()
    truth = value_policies({}, real.p_true, prio, amount, table.fees).set_index("policy")
    n = len(real.test)
    ope = pd.DataFrame(section["ope"]).set_index(["policy", "reward", "estimator"])
    # per attempt, within 1% of the approval rate and 3% of the value (the intervals'
    # half-widths are about 1.4% and 4% on this world)
    for reward, figure, tol in (("approval", "approvals", 0.01), ("value", "value", 0.03)):
        row = ope.loc[("static", reward, "snips")]
        true = truth.loc["static", figure] / n
        assert row["low"] <= true <= row["high"], reward
        assert abs(row["estimate"] - true) <= tol * true, reward


def test_the_inferred_table_holds_exactly_the_routes_each_merchant_used(real: RealLog) -> None:
    table = real.routes.table
    used = real.frame.groupby(real.frame["merchant_id"].astype(str))["route"].agg(set)
    assert set(table.merchant_routes) == set(used.index)
    for merchant, routes in used.items():
        assert set(table.merchant_routes[merchant]) == routes, merchant
    assert table.names == tuple(sorted(real.frame["route"].unique()))
    # every held route is one the simulator contracted, and the most used one before the test
    # split is the merchant's first priority wherever the history shows enough of it
    counts = real.history.groupby(real.history["merchant_id"].astype(str)).size()
    busy = counts[counts >= 30].index
    for merchant in table.merchant_routes:
        assert set(table.merchant_routes[merchant]) <= set(real.meta["merchant_routes"][merchant])
    first = [table.merchant_routes[m][0] == real.meta["merchant_routes"][m][0] for m in busy]
    assert len(first) >= 20 and np.mean(first) >= 0.95


def test_inference_orders_by_the_history_then_the_test_split() -> None:
    merchant = np.array(["a", "a", "a", "a", "b", "b", "b"], dtype=object)
    route = np.array(["x", "y", "y", "z", "x", "x", "y"], dtype=object)
    before = np.array([True, True, True, False, False, True, False])
    got = infer_merchant_routes(merchant, route, before)
    # a: y twice before, x once, z only after; b: x once before (and once after), y after
    assert got == {"a": ("y", "x", "z"), "b": ("x", "y")}


def _write(path: Path, doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_routes_file_gives_the_fees_and_its_merchants_routes(
    real: RealLog, tmp_path: Path
) -> None:
    routes = [{"name": r["name"], "fee": r["fee"]} for r in real.meta["routes"]]
    del routes[-1]["fee"]  # a route without a fee costs 0, with a note
    listed = dict(list(real.meta["merchant_routes"].items())[:5])
    path = _write(tmp_path / "routes.yaml", {"routes": routes, "merchant_routes": listed})
    got = resolve_routes(real.history, real.test, {}, path)
    table = got.table
    assert table.names == tuple(r["name"] for r in routes)
    assert list(table.fees[:-1]) == [r["fee"] for r in routes[:-1]] and table.fees[-1] == 0.0
    for merchant, held in listed.items():
        assert table.merchant_routes[merchant] == tuple(held)
    inferred = real.routes.table.merchant_routes
    other = set(table.merchant_routes) - set(listed)
    assert other and all(table.merchant_routes[m] == inferred[m] for m in other)
    notes = " ".join(got.notes)
    assert f"cost 0 per attempt: ['{routes[-1]['name']}']" in notes
    assert "inferred from the log" in notes and got.source == f"routes file {path}"
    # the file's fees are what the value reward pays (JSON reads as well as YAML)
    as_json = tmp_path / "routes.json"
    as_json.write_text(json.dumps({"routes": routes, "merchant_routes": listed}))
    from_json = resolve_routes(real.history, real.test, {}, as_json)
    out = real.run(routes=from_json, predictors={}, n_bootstrap=20)
    assert [r["fee"] for r in out["routes"]] == list(table.fees)
    # meta.json is used where there is no routes file
    assert resolve_routes(real.history, real.test, real.meta).source == "meta.json"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([1, 2], "expected a mapping with 'routes'"),
        ({"merchant_routes": {}}, "'routes' must be a non-empty list"),
        ({"routes": [{"fee": 0.1}]}, r"routes\[0\]\.name is missing"),
        ({"routes": [{"name": "a", "fee": -1}]}, r"routes\[0\]\.fee must be a number >= 0"),
        ({"routes": [{"name": "a", "fee": "cheap"}]}, r"routes\[0\]\.fee must be a number"),
        ({"routes": [{"name": "a"}, {"name": "a"}]}, r"routes\[1\]\.name 'a' is listed twice"),
        ({"routes": [{"name": "a", "cost": 1}]}, r"routes\[0\] has unknown keys \['cost'\]"),
        ({"routes": [{"name": "a"}], "merchant_route": {}}, r"unknown keys \['merchant_route'\]"),
        (
            {"routes": [{"name": "a"}], "merchant_routes": {"m1": ["a", "b"]}},
            r"merchant_routes\['m1'\] names routes \['b'\]",
        ),
        (
            {"routes": [{"name": "a"}], "merchant_routes": {"m1": []}},
            r"merchant_routes\['m1'\] must be a non-empty list",
        ),
    ],
)
def test_a_malformed_routes_file_names_the_field(doc: Any, message: str, tmp_path: Path) -> None:
    with pytest.raises(IssuerSeqError, match=message):
        read_routes_file(_write(tmp_path / "routes.yaml", doc))


def test_routes_the_table_lacks_are_named(real: RealLog, tmp_path: Path) -> None:
    names = sorted(real.frame["route"].unique())
    path = _write(tmp_path / "short.yaml", {"routes": [{"name": n} for n in names[:-1]]})
    with pytest.raises(IssuerSeqError, match=rf"the log's routes \['{names[-1]}'\] are not in"):
        resolve_routes(real.history, real.test, {}, path)
    with pytest.raises(IssuerSeqError, match="does not exist"):
        read_routes_file(tmp_path / "absent.yaml")
    # a merchant the file gives one route, whose test attempts went through another
    row = real.test.iloc[0]
    others = [n for n in names if n != row["route"]]
    table = RouteTable(
        names=tuple(names), fees=np.zeros(len(names)), merchant_routes={"m": (others[0],)}
    )
    with pytest.raises(IssuerSeqError, match="through a route their merchant does not hold"):
        check_logged_routes(table, np.array(["m"]), np.array([row["route"]]), "routes file f")
    assert (table.priority(["m"]) != NOT_HELD).sum() == 1


def test_without_propensities_it_is_not_applicable(real: RealLog) -> None:
    out = evaluate_routing(real.test.drop(columns=["route_propensity"]), None, {}, {})
    assert out == {
        "applicable": False,
        "note": "no route_propensity: off-policy estimates need the logging policy's "
        "propensities (the probability with which it chose each logged route)",
    }


def test_the_report_renders_the_off_policy_section(section: dict[str, Any], tmp_path: Path) -> None:
    summary = report_with_routing(section, tmp_path)
    rows = {r["policy"]: r for r in summary["routing_policies"]}
    assert list(rows) == ["static", "success_rate", "noisy"]
    snips = next(
        r
        for r in section["ope"]
        if (r["policy"], r["reward"], r["estimator"]) == ("noisy", "value", "snips")
    )
    assert rows["noisy"]["value_snips"].startswith(f"{snips['estimate']:,.4f} [")
    assert summary["figures"]["routing_ope"] == "routing_ope.png"
    assert (tmp_path / "routing_ope.png").read_bytes()[:4] == b"\x89PNG"
    assert summary["figures"]["routing_reaction"] is None
    page = (tmp_path / "report.html").read_text()
    assert "Off-policy estimates only: the log has no truth" in page
    assert "The logging policy&#x27;s own value: approval rate" in page
    assert "Route table from the log" in page and "covers the truth" not in page


def test_evaluate_a_real_log_with_a_routes_file(
    tiny_bundle: tuple[Path, Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`issuer-seq evaluate routes_file=...` on a log without truth or meta.json: the trained
    model's routing valued off-policy, the file's fees in the value reward."""
    from hydra import compose, initialize_config_dir

    from issuer_seq.cli import conf_dir
    from issuer_seq.commands.evaluate import run as evaluate_command

    data, tiny_run, _ = tiny_bundle
    alone = tmp_path / "log"
    alone.mkdir()
    shutil.copy(data / "transactions.parquet", alone / "transactions.parquet")
    run = tmp_path / "run"  # a copy: evaluate writes evaluation.json into the run dir
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    meta = json.loads((data / "meta.json").read_text())
    fees = [{"name": r["name"], "fee": r["fee"]} for r in meta["routes"]]
    path = _write(tmp_path / "routes.yaml", {"routes": fees})
    overrides = [
        f"data_dir={alone}",
        f"run_dir={run}",
        f"routes_file={path}",
        "baselines.models=[]",
        "ablations={}",
    ]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("evaluate", overrides)
    with caplog.at_level("INFO"):
        result = evaluate_command(cfg)
    assert "oracle" not in result["approval"] and "note" in result["retry"]
    routing = result["routing"]
    assert routing["mode"] == "off_policy_only"
    assert list(routing["policies"])[:3] == ["static", "success_rate", "transformer"]
    assert "oracle" not in routing["policies"]
    assert routing["routes"] == fees
    assert routing["route_table"]["source"] == f"routes file {path}"
    assert all(r["estimate"] is not None and r["low"] is not None for r in routing["ope"])
    assert json.loads((run / "evaluation.json").read_text())["routing"] == routing
    assert "routing (off-policy)" in caplog.text and "off-policy estimates only" in caplog.text
