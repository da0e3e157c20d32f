"""The suite's results as one JSON document and a Markdown table per part of the suite.

Held-back worlds are reported in their own table (and their own key of suite.json), never
mixed into the figures of the worlds the recipe is developed on.
"""

from __future__ import annotations

from typing import Any

#: models of evaluation.json whose metrics the suite keeps (the oracle only with truth; the
#: stacked arm only where LightGBM ran)
MODELS = ("transformer", "lightgbm", "stacked", "oracle", "base_rate")
OPTIONAL = ("stacked", "oracle")
#: metrics kept per model
METRICS = ("logloss", "auroc", "ece", "oracle_share")


def world_metrics(evaluation: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """{model: {metric: value}} of the suite's models from an evaluation.json document.
    A log without truth has no oracle: its metrics and every oracle share are None; so are
    the stacked arm's of an evaluation without it."""
    approval = evaluation["approval"]
    missing = [m for m in MODELS if m not in approval and m not in OPTIONAL]
    if missing:
        raise KeyError(f"evaluation has no {missing}: the suite needs {list(MODELS)}")
    return {m: {k: approval.get(m, {}).get(k) for k in METRICS} for m in MODELS}


def world_recalibrated(evaluation: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """{model: {logloss, ece}} of the transformer and LightGBM recalibrated to recent outcomes
    (evaluation.json `recalibration`); None values where evaluate did not report it."""
    recal = evaluation.get("recalibration") or {}
    return {
        m: {k: recal.get(m, {}).get(k) for k in ("logloss", "ece")}
        for m in ("transformer", "lightgbm")
    }


#: routing policies whose share of the oracle's uplift the suite keeps
ROUTING = (
    "transformer",
    "transformer_recalibrated",
    "lightgbm",
    "lightgbm_recalibrated",
    "success_rate",
)


def world_routing(evaluation: dict[str, Any]) -> dict[str, float | None]:
    """{policy: its share of the oracle's uplift over static routing} (evaluation.json
    `routing`, valued with the truth); None for a policy that did not run, and for every one
    where routing was not valued (a log of one route, no propensities, no truth)."""
    routing = evaluation.get("routing") or {}
    policies = routing.get("policies", {}) if routing.get("mode") == "truth" else {}
    return {
        p: (policies.get(p, {}).get("share_of_oracle_uplift") or {}).get("value") for p in ROUTING
    }


def of_ceiling(
    metrics: dict[str, dict[str, float | None]], ceiling: dict[str, Any]
) -> dict[str, Any]:
    """{"share_of_ceiling": {model: its oracle share / the ceiling's}} for the transformer
    and LightGBM; {} when the ceiling did not run or reached no share above the base rate."""
    top = ceiling.get("oracle_share")
    if top is None or not top > 0:
        return {}
    shares = {m: metrics[m]["oracle_share"] for m in ("transformer", "lightgbm")}
    return {"share_of_ceiling": {m: None if x is None else x / top for m, x in shares.items()}}


def _num(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _diff(d: dict[str, Any]) -> str:
    ci = d.get("ci95")
    text = f"{d['difference']:+.4f}"
    return text + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")


def _ceiling_cells(w: dict[str, Any]) -> tuple[str, str, str, str]:
    """Log loss, AUROC and oracle share of the world's ceiling, and the models' shares of
    the ceiling's share; the reason in each cell when it did not run."""
    c = w["ceiling"]
    if "skipped" in c:
        return (c["skipped"],) * 4
    of = c.get("share_of_ceiling", {})
    fractions = f"{_pct(of.get('transformer'))} / {_pct(of.get('lightgbm'))}"
    return _num(c["logloss"]), _num(c["auroc"]), _pct(c["oracle_share"]), fractions


def _table(worlds: dict[str, dict[str, Any]]) -> list[str]:
    head = (
        "| world | generator | cards | days | attempts | approval | log loss: transformer / "
        "LightGBM / stacked / oracle | ceiling log loss | transformer - LightGBM log loss "
        "[95%] | AUROC: transformer / LightGBM | ceiling AUROC | transformer - LightGBM AUROC "
        "[95%] | ECE: transformer / LightGBM | recalibrated log loss: transformer / LightGBM "
        "| recalibrated ECE: transformer / LightGBM | oracle share: transformer / LightGBM / "
        "stacked | ceiling oracle share | of the ceiling's share: transformer / LightGBM | "
        "routing, share of the oracle's uplift: transformer / recalibrated / LightGBM / "
        "recalibrated / success rate | wall s: data / train / evaluate / bootstrap / ceiling |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, w in worlds.items():
        m, p, d, s = w["metrics"], w["params"], w["transformer_minus_lightgbm"], w["seconds"]
        tr, lg, orc = m["transformer"], m["lightgbm"], m["oracle"]
        st = m.get("stacked", dict.fromkeys(METRICS))  # suite.json files from before the arm
        none = dict.fromkeys(("logloss", "ece"))  # those from before recalibration, below
        recal = w.get("recalibrated", {})
        rt, rl = recal.get("transformer", none), recal.get("lightgbm", none)
        c_logloss, c_auroc, c_share, c_fractions = _ceiling_cells(w)
        routing = w.get("routing", {})  # suite.json files from before it: "-"
        routes = " / ".join(_pct(routing.get(p)) for p in ROUTING)
        lines.append(
            f"| {name} | {w['generator']} | {p['n_cards']:,} | {p['days']} | {w['data']['rows']:,} "
            f"| {_pct(w['data']['approval_rate'])} "
            f"| {_num(tr['logloss'])} / {_num(lg['logloss'])} / {_num(st['logloss'])} / "
            f"{_num(orc['logloss'])} "
            f"| {c_logloss} | {_diff(d['logloss'])} "
            f"| {_num(tr['auroc'])} / {_num(lg['auroc'])} | {c_auroc} | {_diff(d['auroc'])} "
            f"| {_num(tr['ece'])} / {_num(lg['ece'])} "
            f"| {_num(rt['logloss'])} / {_num(rl['logloss'])} "
            f"| {_num(rt['ece'])} / {_num(rl['ece'])} "
            f"| {_pct(tr['oracle_share'])} / {_pct(lg['oracle_share'])} / "
            f"{_pct(st['oracle_share'])} | {c_share} "
            f"| {c_fractions} | {routes} "
            f"| {s.get('generate', 0):.0f} / {s.get('train', 0):.0f} / "
            f"{s.get('evaluate', 0):.0f} / {s.get('bootstrap', 0):.0f} / "
            f"{s.get('ceiling', 0):.0f} |"
        )
    return lines


def markdown(result: dict[str, Any]) -> str:
    """suite.md: one table for the worlds, one for the held-back worlds when they ran."""
    lines = [
        f"# Suite `{result['suite']}`",
        "",
        f"Train overrides: `{result['train_overrides']}`; evaluate overrides: "
        f"`{result['evaluate_overrides']}`; {result['bootstrap_resamples']} paired-bootstrap "
        "resamples of the test attempts per world. Differences are transformer minus LightGBM: "
        "negative log loss and positive AUROC favour the transformer. The ceiling is LightGBM "
        "fitted to the truth `p_approve` on the same SQL features (docs/suite.md): about the "
        "most of the oracle's improvement a model of these features can reach.",
        "",
        "## Worlds",
        "",
        *_table(result["worlds"]),
        "",
    ]
    if result["held_back_worlds"]:
        lines += ["## Held-back worlds", "", *_table(result["held_back_worlds"]), ""]
    else:
        lines += [
            f"Held-back worlds ({', '.join(result['held_back_names']) or 'none'}) did not run "
            "(`include_held_back=true` runs them).",
            "",
        ]
    lines.append(f"Total wall time: {result['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"
