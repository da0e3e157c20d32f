"""Which model evaluate recommends: test log loss, paired bootstraps and the latency budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from issuer_seq.cli import conf_dir
from issuer_seq.commands.evaluate import latency_budget, redecide
from issuer_seq.errors import IssuerSeqError
from issuer_seq.evaluate.recommend import compare, decide, recommend


def _bench(transformer_ms: float | None, lightgbm_ms: float | None) -> dict[str, Any]:
    """A bench.json with the single-request p99 of the arms given (None: arm not measured)."""
    arms = {
        arm: {"single_request": {"p99_ms": ms}}
        for arm, ms in (("onnx_fp32", transformer_ms), ("lightgbm", lightgbm_ms))
        if ms is not None
    }
    return {"scorers": {"arms": arms}}


def _recommend_inputs(
    transformer_noise: float, n: int = 20_000
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The truth's p, LightGBM's as the truth plus small noise, the base rate as a constant
    and the transformer as the truth plus `transformer_noise` on the logit."""
    rng = np.random.default_rng(1)
    logit = rng.normal(1.5, 1.2, n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(np.int64)

    def noisy(scale: float) -> np.ndarray:
        return 1 / (1 + np.exp(-(logit + rng.normal(0, scale, n))))

    p = {"base_rate": np.full(n, y.mean()), "lightgbm": noisy(0.3)}
    p["transformer"] = noisy(transformer_noise)
    return y, p


def test_recommendation_prefers_the_faster_model_unless_significantly_worse() -> None:
    # the transformer exactly the truth: significantly better than LightGBM's noisy p
    y, p = _recommend_inputs(0.0)
    rec = recommend(y, p, resamples=200)
    assert rec["model"] == "transformer" and rec["best_logloss_model"] == "transformer"
    gap = rec["comparisons"]["transformer_minus_lightgbm"]
    assert gap["significant"] and gap["ci95"][1] < 0 < -gap["logloss_difference"]
    assert "latency was not measured" in rec["text"] and rec["latency_p99_ms"] is None
    # the transformer as LightGBM up to a tie: LightGBM, the faster, is recommended
    y, p = _recommend_inputs(0.3)
    p["transformer"] = np.clip(p["lightgbm"] * (1 + 1e-6), 0, 1)
    rec = recommend(y, p, resamples=200)
    if rec["best_logloss_model"] == "transformer":
        assert not rec["comparisons"]["transformer_minus_lightgbm"]["significant"]
    assert rec["model"] == "lightgbm"
    # without LightGBM, a transformer worse than the base rate: said plainly, base rate chosen
    y, p = _recommend_inputs(0.0)
    del p["lightgbm"]
    p["transformer"] = 1 - p["transformer"]
    rec = recommend(y, p, resamples=200)
    assert rec["model"] == "base_rate" and rec["transformer_worse_than_base_rate"]
    assert "worse than the issuer x MCC base rate" in rec["text"]
    assert "do not deploy it" in rec["text"]
    with pytest.raises(ValueError, match="base_rate"):
        recommend(y, {"transformer": p["transformer"]})


def test_a_latency_budget_leaves_out_a_model_measured_over_it() -> None:
    # the transformer exactly the truth: the best, significantly, and without a budget chosen
    y, p = _recommend_inputs(0.0)
    accuracy = compare(y, p, resamples=200)
    slow = _bench(transformer_ms=5.0, lightgbm_ms=0.8)
    assert decide(accuracy, slow)["model"] == "transformer"
    assert decide(accuracy, slow, budget_ms=10)["model"] == "transformer"
    # over a 2 ms budget: left out, said so; LightGBM, next in log loss, is recommended
    rec = decide(accuracy, slow, budget_ms=2)
    assert rec["model"] == "lightgbm" and rec["over_budget"] == ["transformer"]
    assert rec["best_logloss_model"] == "transformer" and rec["latency_budget_ms"] == 2
    assert "transformer p99 5.000 ms is over the budget 2 ms" in rec["text"]
    assert "lowest test log loss within the latency budget: lightgbm" in rec["text"]
    assert rec["latency_unchecked"] == []
    # both over it: the base rate, a table lookup, is always within the budget
    rec = decide(accuracy, slow, budget_ms=0.5)
    assert rec["model"] == "base_rate" and rec["over_budget"] == ["lightgbm", "transformer"]
    with pytest.raises(ValueError, match="positive"):
        decide(accuracy, slow, budget_ms=0)


def test_a_budget_without_a_measured_latency_is_flagged_not_applied() -> None:
    y, p = _recommend_inputs(0.0)
    accuracy = compare(y, p, resamples=200)
    # LightGBM's arm not in the bench: kept and named, only the transformer's checked
    rec = decide(accuracy, _bench(transformer_ms=1.0, lightgbm_ms=None), budget_ms=2)
    assert rec["model"] == "transformer" and rec["over_budget"] == []
    assert rec["latency_unchecked"] == ["lightgbm"]
    assert "the latency budget 2 ms is not checked for lightgbm" in rec["text"]
    # no bench.json at all: neither is left out on a guess, both are named
    rec = decide(accuracy, None, budget_ms=2)
    assert rec["model"] == "transformer" and rec["over_budget"] == []
    assert rec["latency_unchecked"] == ["lightgbm", "transformer"]
    assert "latency was not measured" in rec["text"]
    assert "not checked for lightgbm and transformer" in rec["text"]
    # no budget: nothing to check, nothing flagged
    assert decide(accuracy, None)["latency_unchecked"] == []


def test_decide_on_the_stored_accuracy_part_is_recommend() -> None:
    y, p = _recommend_inputs(0.0)
    bench, budget = _bench(transformer_ms=5.0, lightgbm_ms=0.8), 2.0
    one_shot = recommend(y, p, bench, budget, resamples=200)
    # as evaluate stores it: decided without a bench, through JSON
    stored = json.loads(json.dumps(recommend(y, p, resamples=200)))
    assert stored["model"] == "transformer" != one_shot["model"]
    assert decide(stored, bench, budget) == one_shot
    assert decide(compare(y, p, resamples=200), bench, budget) == one_shot
    with pytest.raises(ValueError, match="accuracy part"):
        decide({"model": "transformer"}, bench, budget)


def test_redecide_rewrites_evaluation_json_with_a_later_bench(tmp_path: Path) -> None:
    y, p = _recommend_inputs(0.0)
    stored = recommend(y, p, resamples=200)
    evaluation = {"approval": {"transformer": {"logloss": 0.3}}, "recommendation": stored}
    (tmp_path / "evaluation.json").write_text(json.dumps(evaluation))
    bench = _bench(transformer_ms=5.0, lightgbm_ms=0.8)
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    rec = redecide(tmp_path / "evaluation.json", tmp_path / "bench.json", 2.0)
    written = json.loads((tmp_path / "evaluation.json").read_text())
    assert written["recommendation"] == rec == json.loads(json.dumps(decide(stored, bench, 2.0)))
    assert rec["model"] == "lightgbm" and rec["latency_p99_ms"]["transformer"] == 5.0
    assert written["approval"] == evaluation["approval"]


def test_the_latency_budget_config() -> None:
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        assert latency_budget(compose("evaluate")) is None
        assert latency_budget(compose("evaluate", ["latency_budget_ms=2.5"])) == 2.5
    for bad in (0, -1, "fast", True):
        with pytest.raises(IssuerSeqError, match="latency_budget_ms"):
            latency_budget(OmegaConf.create({"latency_budget_ms": bad}))
