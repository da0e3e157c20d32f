"""The latency-vs-accuracy comparison report: report.html (self-contained), report.json, PNGs.

Reads what evaluate and bench measured (evaluation.json, bench.json) and writes what a
payments ML team needs to choose a model: every model's accuracy and calibration, its
latency and throughput where measured, the latency-vs-accuracy chart with the Pareto front,
reliability and precision-recall curves, the retry-policy comparison by decline cause, the
routing policies (their value with intervals, where the oracle's uplift lies, the
off-policy estimates against the truth, the reaction to issuer-by-route episodes), the
ablations, and the data, configuration and machine the numbers come from.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.transforms import Bbox

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from issuer_seq.evaluate.routing import recalibration_verdicts  # noqa: E402

COLORS = {
    "transformer": "#1f6feb",
    # model-size variants of the transformer: lighter for smaller
    "transformer_tiny": "#80ccff",
    "transformer_small": "#54aeff",
    "transformer_base": "#0a3069",
    "oracle": "#2da44e",
    "base_rate": "#8c959f",
    "lightgbm": "#d4a72c",
    "stacked": "#8250df",
    "xgboost": "#bf3989",
    "logistic": "#cf222e",
}
MAIN_MODELS = ("oracle", "transformer", "lightgbm", "stacked", "xgboost", "logistic", "base_rate")


def model_table(
    evaluation: Mapping[str, Any], bench: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """One row per model / runtime variant: accuracy, calibration, latency, throughput."""
    rows = []
    arms = (bench or {}).get("scorers", {}).get("arms", {})
    # Arms name the model they run ("transformer" for its runtimes, "lightgbm" for the
    # baseline's own scorer); bench.json files older than that field held transformers only.
    transformer_arms = {
        k: a for k, a in arms.items() if a.get("model", "transformer") == "transformer"
    }
    for name, m in evaluation["approval"].items():
        row = {
            "model": name,
            "auroc": m["auroc"],
            "ap_decline": m["ap_decline"],
            "logloss": m["logloss"],
            "brier": m["brier"],
            "ece": m["ece"],
            "oracle_share": m.get("oracle_share"),
            "params": m.get("params"),
            "p50_ms": None,
            "p99_ms": None,
            "scores_per_s_batch_64": None,
        }
        if name == "transformer" and transformer_arms:
            # The same network in three runtimes: one row per runtime.
            for arm, a in transformer_arms.items():
                variant = row | {
                    "model": f"transformer ({arm})",
                    "p50_ms": a["single_request"]["p50_ms"],
                    "p99_ms": a["single_request"]["p99_ms"],
                    "scores_per_s_batch_64": a["batch_scores_per_s"].get("64"),
                }
                if arm == "onnx_int8":
                    # Quantized weights: the fp32 test metrics do not apply; the export's
                    # validation check (manifest.json, variants.int8) holds its accuracy.
                    for key in ("auroc", "ap_decline", "logloss", "brier", "ece", "oracle_share"):
                        variant[key] = None
                rows.append(variant)
            continue
        a = arms.get(name)
        if a is not None and a.get("model") == name:
            row |= _latency(a)
        rows.append(row)
    # A baseline benchmarked but not in this evaluation: its latency, without accuracy.
    for name, a in arms.items():
        if a.get("model", "transformer") == name and name not in evaluation["approval"]:
            empty = dict.fromkeys(("auroc", "ap_decline", "logloss", "brier", "ece"))
            rows.append(
                {"model": name, **empty, "oracle_share": None, "params": None, **_latency(a)}
            )
    return rows


def _latency(arm: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "p50_ms": arm["single_request"]["p50_ms"],
        "p99_ms": arm["single_request"]["p99_ms"],
        "scores_per_s_batch_64": arm["batch_scores_per_s"].get("64"),
    }


def serving_notes(bench: Mapping[str, Any] | None) -> list[str]:
    """Sentences on the latency target (docs/targets.md) and the HTTP service, from bench.json."""
    if not bench:
        return []
    notes = []
    vs = bench.get("scorers", {}).get("vs_lightgbm")
    target = bench.get("targets", {}).get("scorer_p99_vs_lightgbm")
    if vs and target:
        ratios = ", ".join(
            f"{k} {v:.2f}x" for k, v in vs["transformer_p99_over_lightgbm_p99"].items()
        )
        verdict = "met" if target["met"] else "not met"
        if "ceiling" in target and not target["met"]:
            verdict += f" ({'within' if target['within_ceiling'] else 'above'} the ceiling of "
            verdict += f"{target['ceiling']:g}x)"
        notes.append(
            f"Transformer p99 over the LightGBM scorer's p99 (same requests, one thread, end to "
            f"end): {ratios}; the design target of at most {target['at_most']:g}x is {verdict}."
        )
    model = bench.get("lightgbm", {})
    if str(model.get("source", "")).startswith("fitted"):
        notes.append(
            f"LightGBM's latency is that of a model the bench fitted with the tuned defaults "
            f"({model['trees']} trees, no search); its accuracy row is the evaluation's model."
        )
    elif str(model.get("source", "")).startswith("issuer-seq evaluate"):
        notes.append(
            f"LightGBM's latency and accuracy are one model's: the one the evaluation's search "
            f"chose ({model['trees']} trees)."
        )
    http = bench.get("http", {})
    if "p99_ms" in http:
        notes.append(
            f"Over HTTP on loopback at {http['rate_per_s']:g} requests/s for {http['seconds']:g} s:"
            f" p50 {http['p50_ms']:.1f} ms, p95 {http['p95_ms']:.1f} ms, p99 {http['p99_ms']:.1f}"
            f" ms, error rate {http['error_rate']:.1%} ({http['fallbacks']} fallback answers)."
        )
    overhead = http.get("overhead", {})
    target = bench.get("targets", {}).get("http_p99_over_inprocess_ms")
    if "http" in overhead and target:
        verdict = "met" if target["met"] else "not met"
        notes.append(
            f"One request at a time over keep-alive, HTTP p50 {overhead['http']['p50_ms']:.2f} ms"
            f" and p99 {overhead['http']['p99_ms']:.2f} ms against "
            f"{overhead['in_process']['p50_ms']:.2f} ms and "
            f"{overhead['in_process']['p99_ms']:.2f} ms in process: HTTP adds "
            f"{overhead['p99_over_in_process_ms']:.2f} ms at p99; the design target of at most "
            f"{target['at_most']:g} ms is {verdict}."
        )
    return notes


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (latency low, log loss low)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 <= y) and (x2, y2) != (x, y) for x2, y2 in points):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency_chart(rows: list[dict[str, Any]], path: Path) -> Path | None:
    measured = [r for r in rows if r["p99_ms"] is not None and r["logloss"] is not None]
    if not measured:
        return None
    points = [(r["p99_ms"], r["logloss"]) for r in measured]
    front = pareto(points)
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    fx = [points[i][0] for i in front]
    fy = [points[i][1] for i in front]
    # The front as a staircase (a point dominates everything up and to its right) and rings.
    ax.step(fx, fy, where="post", ls="--", color="#1f6feb", alpha=0.5)
    ax.scatter(fx, fy, s=190, facecolors="none", edgecolors="#1f6feb", label="Pareto front")
    for r in measured:
        color = COLORS.get(r["model"].split(" ")[0], "#57606a")
        ax.scatter(r["p99_ms"], r["logloss"], s=60, color=color, zorder=3)
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    wide = max(xs) / max(min(xs), 1e-9) > 10
    if wide:  # runtimes an order of magnitude apart read better on a log axis
        ax.set_xscale("log")
        ax.set_xlim(min(xs) / 1.8, max(xs) * 1.8)
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    else:
        ax.set_xlim(0, max(xs) * 1.3)
    pad = max(max(ys) - min(ys), 0.01) * 0.2
    ax.set_ylim(min(ys) - pad, max(ys) + 1.5 * pad)  # room for the labels above the points
    scale = "log scale; " if wide else ""
    ax.set_xlabel(f"single-request p99 latency, ms ({scale}one CPU thread, end to end)")
    ax.set_ylabel("test log loss (lower is better)")
    ax.set_title("Latency vs accuracy (lower left is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    _labels(fig, ax, [(r["model"], r["p99_ms"], r["logloss"]) for r in measured])
    return _save(fig, path)


def _labels(fig: Any, ax: Any, points: list[tuple[str, float, float]]) -> None:
    """A label above each point, or below it, then beside it, where it would cover a point or
    a label placed before (close model sizes and runtimes sit close together)."""
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    dots = ax.transData.transform([(x, y) for _, x, y in points])
    placed: list[Any] = [Bbox.from_extents(u - 5, v - 5, u + 5, v + 5) for u, v in dots]
    spots = [((0, 9), "center", "bottom"), ((0, -9), "center", "top"), ((9, 0), "left", "center")]
    for name, x, y in points:
        for offset, ha, va in spots:
            label = ax.annotate(
                name, (x, y), textcoords="offset points", xytext=offset, ha=ha, va=va, fontsize=8
            )
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            if (offset, ha, va) != spots[-1]:
                label.remove()
        placed.append(box)


def calibration_chart(evaluation: Mapping[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], ":", color="#57606a", label="perfect")
    for name in MAIN_MODELS:
        m = evaluation["approval"].get(name)
        if m is None:
            continue
        c = m["calibration_curve"]
        ax.plot(
            c["mean_predicted"],
            c["observed"],
            "o-",
            ms=3,
            label=f"{name} (ECE {m['ece']:.3f})",
            color=COLORS.get(name),
        )
    ax.set_xlabel("predicted approval probability")
    ax.set_ylabel("observed approval rate")
    ax.set_title("Reliability (15 bins, test split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def pr_chart(evaluation: Mapping[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for name in MAIN_MODELS:
        m = evaluation["approval"].get(name)
        if m is None or "pr_curve_decline" not in m:
            continue
        c = m["pr_curve_decline"]
        ax.plot(
            c["recall"],
            c["precision"],
            label=f"{name} (AP {m['ap_decline']:.3f})",
            color=COLORS.get(name),
        )
    ax.set_xlabel("recall (declines)")
    ax.set_ylabel("precision (declines)")
    ax.set_title("Precision-recall of the decline class")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def retry_chart(evaluation: Mapping[str, Any], path: Path) -> Path | None:
    policies = evaluation.get("retry", {}).get("policies")
    if not policies:
        return None
    names = [n for n in policies if n != "no_retry"]
    causes = sorted({c for n in names for c in policies[n]["by_cause"]})
    fig, ax = plt.subplots(figsize=(7, 4.2))
    bottom = [0.0] * len(names)
    for cause in causes:
        values = [policies[n]["by_cause"].get(cause, {}).get("value", 0.0) for n in names]
        ax.bar(names, values, bottom=bottom, label=cause)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("expected value of the retries (currency units)")
    ax.set_title("Retry policies on declined test attempts, valued with the truth")
    ax.tick_params(axis="x", rotation=25)
    ax.legend(fontsize=8, title="decline cause", bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


ESTIMATOR_COLORS = {"ips": "#d4a72c", "snips": "#bf3989", "dr": "#1f6feb"}
ROUTING_COLORS = {
    "static": "#8c959f",
    "success_rate": "#cf222e",
    "oracle": "#2da44e",
    # a model's routing recalibrated per issuer x route: a darker shade of the model's
    "transformer_recalibrated": "#0a3069",
    "lightgbm_recalibrated": "#7d4e00",
}


def _with_interval(cell: Mapping[str, Any] | None, digits: int = 1, pct: bool = False) -> str:
    """'value [low, high]' of an evaluation {value, low, high}."""
    if not cell or cell.get("value") is None:
        return "-"
    scale, unit = (100.0, "%") if pct else (1.0, "")

    def f(x: Any) -> str:
        return "?" if x is None else f"{scale * x:,.{digits}f}{unit}"

    if cell.get("low") is None or cell["low"] == cell["high"]:
        return f(cell["value"])
    return f"{f(cell['value'])} [{f(cell['low'])}, {f(cell['high'])}]"


def recalibration_rows(evaluation: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per model of evaluation.json `recalibration`: log loss and ECE as exported and
    recalibrated to recent outcomes ([] when evaluate did not report it)."""
    recal = evaluation.get("recalibration") or {}
    return [
        {
            "model": name,
            "logloss_fixed": r["logloss"] - r["logloss_change"],
            "logloss": r["logloss"],
            "ece_fixed": r["ece"] - r["ece_change"],
            "ece": r["ece"],
            "auroc_change": r["auroc_change"],
            "corrected_share": r.get("corrected_share"),
        }
        for name, r in recal.items()
        if isinstance(r, dict) and "logloss_change" in r
    ]


def recalibration_html(evaluation: Mapping[str, Any]) -> list[str]:
    rows = recalibration_rows(evaluation)
    if not rows:
        return []
    settings = evaluation["recalibration"]["settings"]
    cols = [
        ("model", "model"),
        ("logloss_fixed", "log loss, as exported"),
        ("logloss", "log loss, recalibrated"),
        ("ece_fixed", "ECE, as exported"),
        ("ece", "ECE, recalibrated"),
        ("auroc_change", "AUROC change"),
        ("corrected_share", "attempts corrected"),
    ]
    note = (
        f"An intercept added to every logit, refitted every {settings['step_h']:g} h to the "
        f"outcomes of the last {settings['window_h']:g} h (none before {settings['min_outcomes']} "
        "outcomes): what a service with recalibration.enabled=true answers (docs/evaluation.md)."
    )
    return [
        f"<h3>Recalibrated to recent outcomes</h3>{_table(rows, cols)}",
        f"<p class='note'>{html.escape(note)}</p>",
    ]


def off_policy_only(routing: Mapping[str, Any]) -> bool:
    """Is the routing section estimates alone (a log without truth)?"""
    return bool(routing.get("applicable")) and routing.get("mode") == "off_policy_only"


#: the OPE-only table's estimate columns: (reward, estimator)
OPE_COLUMNS = [(rw, est) for rw in ("approval", "value") for est in ("ips", "snips", "dr")]


def routing_ope_rows(routing: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per routing policy of an OPE-only section: each reward's IPS, SNIPS and DR
    estimate per attempt with its bootstrap interval (as text), and the importance weights'
    effective sample size."""
    rows = []
    for name, p in routing["policies"].items():
        mine = {(r["reward"], r["estimator"]): r for r in routing["ope"] if r["policy"] == name}
        row: dict[str, Any] = {"policy": name, "kind": p["kind"]}
        for reward, est in OPE_COLUMNS:
            r = mine.get((reward, est))
            row[f"{reward}_{est}"] = _with_interval(
                r and {"value": r["estimate"], "low": r["low"], "high": r["high"]}, digits=4
            )
        row["effective_sample_size"] = next(iter(mine.values()))["effective_sample_size"]
        rows.append(row)
    return rows


def routing_rows(evaluation: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per routing policy, each figure with its bootstrap interval (as text): valued
    with the truth, or off-policy estimates where the section has no truth."""
    routing = evaluation.get("routing") or {}
    if not routing.get("applicable"):
        return []
    if off_policy_only(routing):
        return routing_ope_rows(routing)
    react = routing.get("reaction", {}).get("policies", {})
    rows = []
    for name, p in routing["policies"].items():
        rx = react.get(name, {})
        if rx.get("median_is_never"):
            median = "never"
        elif rx.get("median_hours") is None:
            median = "-"
        else:
            median = f"{rx['median_hours']:.1f} h"
        rows.append(
            {
                "policy": name,
                "kind": p["kind"],
                "approvals": _with_interval(p["approvals"]),
                "approval_rate": p.get("approval_rate"),
                "value": _with_interval(p["value"]),
                "uplift_value": _with_interval(p["uplift_value"]),
                "share_of_oracle_uplift": _with_interval(p["share_of_oracle_uplift"], pct=True),
                "share_of_oracle_approval_uplift": _with_interval(
                    p["share_of_oracle_approval_uplift"], pct=True
                ),
                "median_reaction": median,
            }
        )
    return rows


def condition_table(routing: Mapping[str, Any]) -> str | None:
    """Where the oracle's uplift lies (`by_condition`): one row per condition, its attempts,
    its part of the oracle's uplift and each policy's share of the oracle's uplift there
    (static and the oracle left out: 0% and 100% by definition). None without the section."""
    by = routing.get("by_condition")
    if not by:
        return None

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    names = [n for n in routing["policies"] if n not in ("static", "oracle")]
    rows = [
        {
            "condition": name,
            "attempts": c["attempts"],
            "part": pct(c["oracle_uplift_share"]),
            **{n: pct(c["share_of_oracle_uplift"].get(n)) for n in names},
        }
        for name, c in by.items()
    ]
    columns = [("condition", "condition"), ("attempts", "attempts")]
    columns += [("part", "part of the oracle's uplift")] + [(n, n) for n in names]
    return _table(rows, columns)


def routing_ope_chart(evaluation: Mapping[str, Any], path: Path) -> Path | None:
    """Per reward, each policy's IPS / SNIPS / DR estimate with its interval beside the
    truth-valued figure (a black bar); an interval that misses the truth is drawn hollow.
    Without truth (OPE-only), the logging policy's own value is the reference (dashed)."""
    routing = evaluation.get("routing") or {}
    rows = routing.get("ope") if routing.get("applicable") else None
    if not rows:
        return None
    no_truth = off_policy_only(routing)
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    estimators = list(dict.fromkeys(r["estimator"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, reward, label in zip(
        axes,
        ("approval", "value"),
        ("approval rate per attempt", "value per attempt (currency units)"),
        strict=True,
    ):
        width = 0.8 / max(len(estimators), 1)
        for k, est in enumerate(estimators):
            for i, pol in enumerate(policies):
                r = next(
                    (
                        x
                        for x in rows
                        if x["policy"] == pol and x["reward"] == reward and x["estimator"] == est
                    ),
                    None,
                )
                if r is None or r["estimate"] is None:
                    continue
                x = i - 0.4 + width * (k + 0.5)
                lo = r["estimate"] - (r["low"] if r["low"] is not None else r["estimate"])
                hi = (r["high"] if r["high"] is not None else r["estimate"]) - r["estimate"]
                color = ESTIMATOR_COLORS.get(est, "#57606a")
                ax.errorbar(
                    x,
                    r["estimate"],
                    yerr=[[lo], [hi]],
                    fmt="o",
                    ms=5,
                    capsize=3,
                    color=color,
                    mfc=color if r.get("covers", True) else "white",
                    label=est.upper() if i == 0 else None,
                )
        if no_truth:
            logged = routing["logged"][reward]["value"]
            ax.axhline(logged, color="black", ls="--", lw=1, label="logging policy")
        else:
            for i, pol in enumerate(policies):
                truth = next(
                    x["truth"] for x in rows if x["policy"] == pol and x["reward"] == reward
                )
                ax.hlines(
                    truth,
                    i - 0.45,
                    i + 0.45,
                    color="black",
                    lw=2,
                    label="truth" if i == 0 else None,
                )
        # slanted, each ending under its own policy: long names side by side stay apart
        ax.set_xticks(
            range(len(policies)), policies, rotation=30, ha="right", rotation_mode="anchor"
        )
        ax.set_ylabel(label)
        ax.set_title(f"reward: {reward}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    level = routing.get("level", 0.95)
    against = (
        "(no truth: dashed, the logging policy's own value)"
        if no_truth
        else "vs the truth (hollow: the interval misses it)"
    )
    fig.suptitle(
        f"Off-policy estimates with {level:.0%} bootstrap intervals {against}", fontsize=10
    )
    return _save(fig, path)


def routing_reaction_chart(evaluation: Mapping[str, Any], path: Path) -> Path | None:
    """Per policy, the hours until it moved off the route of each episode the oracle reacts
    to (x at the right: never, within the episode), and its median (a bar)."""
    routing = evaluation.get("routing") or {}
    react = routing.get("reaction", {}) if routing.get("applicable") else {}
    if not react.get("compared_on"):
        return None
    policies = list(react["policies"])
    lengths = [e["episode_hours"] or 0.0 for e in react["episodes"]]
    reacted = [h for p in react["policies"].values() for h in p["hours"] if h is not None]
    never_x = max([*reacted, 1.0]) * 1.15
    fig, ax = plt.subplots(figsize=(7.5, 0.6 * len(policies) + 1.6))
    for i, name in enumerate(policies):
        p = react["policies"][name]
        color = ROUTING_COLORS.get(name, COLORS.get(name, "#1f6feb"))
        jitter = (np.arange(len(p["hours"])) % 5 - 2) * 0.06
        hours = np.array([np.nan if h is None else h for h in p["hours"]], dtype=float)
        ax.scatter(hours, i + jitter, color=color, s=22, alpha=0.8)
        never = np.isnan(hours)
        ax.scatter(np.full(never.sum(), never_x), i + jitter[never], marker="x", color=color, s=30)
        if p["median_hours"] is not None:
            ax.vlines(p["median_hours"], i - 0.3, i + 0.3, color=color, lw=3)
        median = "never" if p["median_is_never"] else f"{p['median_hours']:.1f} h"
        ax.annotate(
            f"median {median} ({p['reacted']}/{len(p['hours'])} reacted)",
            (never_x, i),
            xytext=(12, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.axvline(never_x * 0.97, color="#d0d7de", ls=":")
    ax.set_yticks(range(len(policies)), policies)
    ax.set_xlim(-0.02 * never_x, never_x * 1.9)
    ax.set_xlabel("hours after the episode starts until the policy moves off the route (x: never)")
    ax.set_title(
        f"Reaction to issuer-by-route episodes ({react['compared_on']} the oracle reacts to; "
        f"median length {np.median(lengths):.0f} h)",
        fontsize=10,
    )
    ax.grid(axis="x", alpha=0.3)
    ax.invert_yaxis()
    return _save(fig, path)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.{digits}f}"
    return html.escape(str(v))


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(r.get(key))}</td>" for key, _ in columns) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path | None) -> str:
    if path is None:
        return "<p class='note'>not measured</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{path.stem}' src='data:image/png;base64,{data}'>"


CSS = "\n".join(
    [
        "body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;",
        "  max-width:1100px;color:#1f2328;line-height:1.45;padding:0 1rem}",
        "h1{font-size:1.6rem;margin-bottom:.2rem}",
        "h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de}",
        "table{border-collapse:collapse;font-size:.85rem;margin:.6rem 0}",
        "th,td{border:1px solid #d0d7de;padding:.3rem .55rem;text-align:right}",
        "th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}",
        "img{max-width:100%;border:1px solid #d0d7de;margin:.4rem 0}",
        ".note{color:#57606a;font-size:.85rem}",
        ".grid{display:grid;grid-template-columns:1fr 1fr;gap:1rem}",
        "pre{background:#f6f8fa;padding:.6rem;font-size:.75rem;overflow:auto}",
    ]
)


def routing_html(
    routing: Mapping[str, Any],
    rows: list[dict[str, Any]],
    columns: list[tuple[str, str]],
    figures: Mapping[str, Path | None],
) -> list[str]:
    """The routing section: its note when it does not apply, else the policy table, the
    off-policy chart with DR's coverage (and why where it misses) and the reaction chart."""
    if not routing:
        return ["<p class='note'>not evaluated (evaluation.json has no routing section)</p>"]
    if not routing.get("applicable"):
        return [f"<p class='note'>Not applicable: {html.escape(routing['note'])}</p>"]
    if off_policy_only(routing):
        return routing_ope_only_html(routing, rows, figures)
    level = routing["level"]
    explain = (
        f"Test attempts ({routing['attempts']}: {routing['n_attempts']:,} attempts of "
        f"{routing['n_payments']:,} payments), valued with the truth's approval probability "
        f"through every route: value = p_approve x amount x margin ({routing['margin']:g}) - "
        f"the route's fee. Brackets: {level:.0%} percentile bootstrap over payments "
        f"({routing['n_bootstrap']} resamples). Share of oracle's uplift: (policy - static) / "
        "(oracle - static). Median reaction: hours until the policy moves an issuer's attempts "
        "off a route after an issuer-by-route episode starts, over the episodes the oracle "
        "reacts to (never: more than half never moved)."
    )
    dr = routing["dr_covers"]
    misses = [r for r in routing["ope"] if r["estimator"] == "dr" and not r["covers"]]
    ope_note = (
        f"Doubly robust: the {level:.0%} interval covers the truth in {dr['covered']} of "
        f"{dr['checks']} checks (policy x reward). Reward model: the predictor's own per-route "
        "p_approve for its policy; for the others, each issuer x route's approval rate on the "
        "log before the test split."
    )
    verdicts = recalibration_verdicts(routing)
    by_condition = condition_table(routing)
    parts = [
        _table(rows, columns),
        f"<p class='note'>{html.escape(explain)}</p>",
        *(
            [
                "<p>Recalibrated per issuer x route (<code>_recalibrated</code>, paired "
                "against the model's own routing):</p><ul>"
                + "".join(f"<li>{html.escape(v)}</li>" for v in verdicts)
                + "</ul>"
            ]
            if verdicts
            else []
        ),
        *(
            [
                "<h3>Where the oracle's uplift lies</h3>",
                by_condition,
                "<p class='note'>Each policy's share of the oracle's uplift within the attempts "
                "made while one of their merchant's routes was in an acquirer outage, while "
                "their issuer declined through one of those routes (an issuer-by-route "
                "episode), and the rest (steady: only what lasts tells the routes apart).</p>",
            ]
            if by_condition
            else []
        ),
        "<h3>Off-policy estimates against the truth</h3>",
        _img(figures.get("routing_ope")),
        f"<p>{html.escape(ope_note)}</p>",
    ]
    if misses:
        items = "".join(
            f"<li>{html.escape(r['policy'])}, {html.escape(r['reward'])}: "
            f"{html.escape(r.get('why', ''))}</li>"
            for r in misses
        )
        parts.append(f"<p>Where DR's interval misses the truth:</p><ul>{items}</ul>")
    react = routing.get("reaction", {})
    parts += [
        "<h3>Reaction to issuer-by-route episodes</h3>",
        _img(figures.get("routing_reaction")),
        "<p class='note'>"
        + html.escape(
            f"{react.get('episodes_in_test', 0)} episodes overlap the test split; the oracle "
            f"reacts to {react.get('compared_on', 0)} (its statuses: "
            f"{react.get('oracle_status', {})}). An episode that starts before the test split "
            "has no pre-episode share in it (no_history); where the oracle stays, staying is "
            "right (not_exposed, never)."
        )
        + "</p>",
    ]
    return parts


def _sentence(text: str) -> str:
    return f"{text[:1].upper()}{text[1:]}."


def _route_table_note(routing: Mapping[str, Any]) -> str:
    table = routing.get("route_table") or {}
    fees = ", ".join(f"{r['name']} {r['fee']:g}" for r in routing["routes"])
    text = f"Route table from {table.get('source', 'meta.json')}; fee per attempt: {fees}."
    return " ".join([text, *map(_sentence, table.get("notes", []))])


def routing_ope_only_html(
    routing: Mapping[str, Any],
    rows: list[dict[str, Any]],
    figures: Mapping[str, Path | None],
) -> list[str]:
    """The routing section of a log without truth: the estimates per policy, the chart with
    the logging policy's own value as the reference, and where the route table came from."""
    level = routing["level"]
    logged = routing["logged"]
    explain = (
        f"{_sentence(routing['note'])} Test attempts ({routing['attempts']}: "
        f"{routing['n_attempts']:,} attempts of {routing['n_payments']:,} payments). Per "
        "attempt: approval rate and value = approved x amount x margin "
        f"({routing['margin']:g}) - the route's fee. Brackets: {level:.0%} percentile bootstrap"
        f" over payments ({routing['n_bootstrap']} resamples). DR's reward model: the "
        "predictor's own per-route p_approve for its policy; for the others, each issuer x "
        "route's approval rate on the log before the test split. The logging policy's own "
        f"value: approval rate {_with_interval(logged['approval'], digits=4)}, value per "
        f"attempt {_with_interval(logged['value'], digits=4)}."
    )
    columns = [
        ("policy", "policy"),
        ("kind", "kind"),
        *((f"{rw}_{est}", f"{rw} {est.upper()}") for rw, est in OPE_COLUMNS),
        ("effective_sample_size", "effective sample size"),
    ]
    return [
        _table(rows, columns),
        f"<p class='note'>{html.escape(explain)}</p>",
        f"<p class='note'>{html.escape(_route_table_note(routing))}</p>",
        "<h3>Off-policy estimates</h3>",
        _img(figures.get("routing_ope")),
    ]


def write_report(
    evaluation: Mapping[str, Any],
    bench: Mapping[str, Any] | None,
    out_dir: Path,
    context: Mapping[str, Any],
) -> dict[str, Any]:
    """Write report.html, report.json and the PNG figures into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = model_table(evaluation, bench)
    figures = {
        "latency_vs_accuracy": latency_chart(rows, out_dir / "latency_vs_accuracy.png"),
        "calibration": calibration_chart(evaluation, out_dir / "calibration.png"),
        "precision_recall": pr_chart(evaluation, out_dir / "precision_recall.png"),
        "retry_policies": retry_chart(evaluation, out_dir / "retry_policies.png"),
        "routing_ope": routing_ope_chart(evaluation, out_dir / "routing_ope.png"),
        "routing_reaction": routing_reaction_chart(evaluation, out_dir / "routing_reaction.png"),
    }
    routing = evaluation.get("routing") or {}
    route_rows = routing_rows(evaluation)
    policies = evaluation.get("retry", {}).get("policies", {})
    policy_rows = [
        {"policy": n, **{k: v for k, v in p.items() if not isinstance(v, dict)}}
        for n, p in policies.items()
    ]
    cause_rows = [
        {"policy": n, "cause": c, **v}
        for n, p in policies.items()
        if n != "no_retry"
        for c, v in p["by_cause"].items()
    ]
    summary = {
        "models": rows,
        "serving": serving_notes(bench),
        "retry_policies": policy_rows,
        "routing_policies": route_rows,
        "recalibration": recalibration_rows(evaluation),
        "figures": {k: (v.name if v else None) for k, v in figures.items()},
        "context": dict(context),
    }
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2, default=str))

    model_cols = [
        ("model", "model"),
        ("auroc", "AUROC"),
        ("ap_decline", "AP (declines)"),
        ("logloss", "log loss"),
        ("brier", "Brier"),
        ("ece", "ECE"),
        ("oracle_share", "share of oracle"),
        ("params", "parameters"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("scores_per_s_batch_64", "scores/s (batch 64)"),
    ]
    policy_cols = [
        ("policy", "policy"),
        ("value", "value"),
        ("expected_recovered_amount", "recovered"),
        ("recovery_rate", "recovery rate"),
        ("retries", "retries"),
        ("retries_per_recovery", "retries / recovery"),
        ("fees", "fees"),
        ("violations", "rule violations"),
        ("share_of_oracle_value", "share of oracle"),
    ]
    cause_cols = [
        ("policy", "policy"),
        ("cause", "cause"),
        ("declines", "declines"),
        ("value", "value"),
        ("recovery_rate", "recovery rate"),
        ("retries", "retries"),
        ("violations", "violations"),
    ]
    route_cols = [
        ("policy", "policy"),
        ("kind", "kind"),
        ("approvals", "expected approvals"),
        ("approval_rate", "approval rate"),
        ("value", "expected value"),
        ("uplift_value", "uplift over static"),
        ("share_of_oracle_uplift", "share of oracle's uplift"),
        ("share_of_oracle_approval_uplift", "share of oracle's approval uplift"),
        ("median_reaction", "median reaction"),
    ]
    missing = [k for k in ("lightgbm", "xgboost", "logistic") if k not in evaluation["approval"]]
    notes = []
    if missing:
        notes.append(f"Not in this evaluation: {', '.join(missing)}.")
    if not any(r["p99_ms"] is not None for r in rows if not r["model"].startswith("transformer")):
        notes.append("Latency is measured for the transformer's runtimes only so far.")
    if any(r["model"] == "transformer (onnx_int8)" for r in rows):
        notes.append(
            "The int8 variant's accuracy is held by the export's validation check "
            "(manifest.json: at most 0.002 AUROC drop, 0.5% log-loss rise)."
        )
    source = html.escape(f"Test split of {context.get('data_dir')}; run {context.get('run_dir')}.")
    explain = (
        "Share of oracle: (log loss of the issuer x MCC base rate - the model's) / (base rate's"
        " - the oracle's). Latency: single requests end to end (history lookup, features,"
        " inference, decision), one CPU thread."
    )
    sizes = [r["model"] for r in rows if r["model"].startswith("transformer_")]
    if sizes:
        explain += (
            f" {', '.join(sizes)}: the same network at another size (conf/model/), trained on"
            " the same log (its own, usually shorter, training budget), served by ONNX Runtime"
            " fp32."
        )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>issuer_seq report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>issuer_seq: latency vs accuracy</h1>",
        f"<p class='note'>{source} {' '.join(html.escape(n) for n in notes)}</p>",
        f"<h2>Models</h2>{_table(rows, model_cols)}<p class='note'>{html.escape(explain)}</p>",
        *(f"<p>{html.escape(n)}</p>" for n in serving_notes(bench)),
        f"<h2>Latency vs accuracy</h2>{_img(figures['latency_vs_accuracy'])}",
        f"<div class='grid'><div><h2>Calibration</h2>{_img(figures['calibration'])}</div>",
        f"<div><h2>Precision-recall</h2>{_img(figures['precision_recall'])}</div></div>",
        *recalibration_html(evaluation),
        f"<h2>Retry policies</h2>{_table(policy_rows, policy_cols)}",
        _img(figures["retry_policies"]),
        f"<h3>By decline cause</h3>{_table(cause_rows, cause_cols)}",
        "<h2>Routing</h2>",
        *routing_html(routing, route_rows, route_cols, figures),
        "<h2>Data, configuration, machine</h2>",
        f"<pre>{html.escape(json.dumps(context, indent=2, default=str))}</pre>",
        "</body></html>",
    ]
    page = "\n".join(parts)
    (out_dir / "report.html").write_text(page)
    return summary
