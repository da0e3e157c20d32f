"""`issuer-seq export`: ONNX graph, parity, variants, manifest and Triton repository.

The session's tiny model, exported once through the CLI (conftest's `tiny_bundle`), is
the bundle every test reads. Never load model_fp16.onnx into onnxruntime in this process: ORT 1.32's
CPU provider segfaults on it at the default optimization level (see export/fp16.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torchmetrics.functional.classification import binary_auroc
from tritonclient.grpc import model_config_pb2 as mc

from issuer_seq import features as F
from issuer_seq.cli import conf_dir
from issuer_seq.errors import IssuerSeqError
from issuer_seq.export import ExportSettings, export_bundle
from issuer_seq.export import bundle as bundle_module
from issuer_seq.export.cases import empty_histories, resize_histories, take
from issuer_seq.export.manifest import verify_bundle
from issuer_seq.export.parity import onnx_outputs, onnx_session, torch_outputs
from issuer_seq.export.quantize import Int8Criteria, auroc, decide
from issuer_seq.export.signature import input_spec, input_specs
from issuer_seq.export.validation import Feeds, ValidationData, load_validation
from issuer_seq.model.network import IssuerSeqNet
from issuer_seq.train.trained_run import TrainedRun

RTOL, ATOL = 1e-3, 1e-5
README = Path(__file__).resolve().parent.parent / "export" / "README.md"


def _compose(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@dataclass
class Exported:
    run_dir: Path
    bundle: Path
    stdout: str
    manifest: dict[str, Any]


@pytest.fixture(scope="module")
def exported(tiny_bundle: tuple[Path, Path, Path]) -> Exported:
    """The session's tiny run, exported once through the command line (conftest)."""
    _, run_dir, bundle = tiny_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    return Exported(run_dir, bundle, (bundle.parent / "export.log").read_text(), manifest)


@pytest.fixture(scope="module")
def run(exported: Exported) -> TrainedRun:
    return TrainedRun.load(exported.run_dir)


@pytest.fixture(scope="module")
def validation(run: TrainedRun) -> ValidationData:
    return load_validation(run, None, max_rows=2000, seed=0)


@pytest.fixture(scope="module")
def head(validation: ValidationData) -> Feeds:
    """The first 64 validation rows as graph inputs."""
    return validation.feeds(validation.rows[:64])[0]


@pytest.fixture(scope="module")
def session(exported: Exported) -> Any:
    return onnx_session(exported.bundle / "model.onnx")


def _assert_parity(net: torch.nn.Module, session: Any, feeds: Feeds) -> None:
    ref, got = torch_outputs(net, feeds), onnx_outputs(session, feeds)
    for name in ("p_approve", "p_retry"):
        assert got[name].shape == ref[name].shape
        assert np.isfinite(got[name]).all()
        np.testing.assert_allclose(got[name], ref[name], rtol=RTOL, atol=ATOL, err_msg=name)


# --- the command and the bundle ---------------------------------------------------------


def test_export_config_composes() -> None:
    cfg = _compose("export", [])
    assert cfg.data_dir is None and cfg.artifact_dir == "export/default"
    assert cfg.parity.rtol == 1e-3 and cfg.parity.atol == 1e-5
    assert cfg.int8.max_auroc_drop == 0.002 and cfg.int8.max_logloss_rise == 0.005


def test_cli_writes_the_bundle(exported: Exported) -> None:
    names = {p.relative_to(exported.bundle).as_posix() for p in exported.bundle.rglob("*")}
    for name in (
        "model.onnx",
        "model_fp16.onnx",
        "parity_sample.npz",
        "manifest.json",
        "triton/issuer_seq/config.pbtxt",
        "triton/issuer_seq/1/model.onnx",
    ):
        assert name in names
    assert "parity" in exported.stdout and "checked on CUDA hosts only" in exported.stdout
    # the staging folder is gone once the bundle is in place
    assert not [p for p in exported.bundle.parent.iterdir() if ".partial-" in p.name]


def test_manifest_describes_model_schema_and_checks(exported: Exported, run: TrainedRun) -> None:
    m = exported.manifest
    assert m["format_version"] == 6
    assert m["model"]["name"] == "issuer_seq" and m["model"]["version"] == 1
    assert (
        m["model"]["weights_sha256"]
        == hashlib.sha256((exported.run_dir / "model.pt").read_bytes()).hexdigest()
    )
    assert m["opset"] == 18
    assert set(m["versions"]) >= {"torch", "onnx", "onnxruntime", "numpy"}
    schema = m["schema"]
    assert [i["name"] for i in schema["inputs"]] == run.spec["inputs"]
    for i in schema["inputs"]:
        assert i["dtype"] == ("int64" if i["kind"] in ("categorical", "length") else "float32")
    assert schema["special_ids"] == {"PAD": 0, "OOV": 1, "NONE": 2}
    assert {k: v["vocab"] for k, v in schema["categorical"].items()} == run.spec["vocab"]
    assert list(schema["numeric"]) == list(F.NUMERIC)
    assert list(schema["relative"]) == list(F.RELATIVE)
    assert [o["shape"] for o in schema["outputs"]] == [["batch"], ["batch", 8]]
    assert m["history"] == {
        "k_card": run.spec["store"]["k_card"],
        "k_issuer": run.spec["store"]["k_issuer"],
        "k_route": run.spec["store"]["k_route"],
        "k_card_merchant": run.spec["store"]["k_card_merchant"],
        "lag_s": 0,
        "alignment": "right",
    }
    assert m["delay_grid"] == run.spec["store"]["delay_grid"]
    assert m["calibration"] == run.spec["calibration"]
    assert m["training_metrics"]["approval"] == run.metrics["approval"]
    parity = m["parity"]
    assert parity["passed"] and parity["worst"]["ratio"] <= 1
    assert parity["provider"] == "CPUExecutionProvider"
    assert {"validation", "batch_1", "batch_7", "batch_64", "empty_histories"} <= set(
        parity["cases"]
    )
    assert parity["cases"]["short_histories"]["history"]["k_card"] < m["history"]["k_card"]
    # the factored graphs: listed and checksummed, chained parity on the same cases, the
    # event graph alone at several sizes, the route graph against the query graph, and the
    # cached state described
    factored = m["factored"]
    files = ("event_encoder.onnx", "query.onnx", "route_query.onnx")
    assert tuple(factored[g]["file"] for g in ("event", "query", "route")) == files
    assert set(files) <= set(m["files"])
    # the streams stacked in the query graph: the route's among them
    shapes = {s["name"]: s["shape"] for s in factored["query"]["inputs"]}
    assert shapes["states"][:2] == ["batch", len(F.STREAMS)] and "route" in F.STREAMS
    chained = factored["parity"]
    assert chained["passed"] and set(chained["cases"]) == set(parity["cases"])
    assert set(chained["event_graph"]) == {"events_1", "events_7", "events_all"}
    assert all(c["max_ratio"] <= 1 for c in chained["event_graph"].values())
    # every known route (ids from 1: OOV and NONE too), each candidate its own route stream,
    # every validation row and an empty history
    routes = chained["route_graph"]
    assert routes["routes"] == run.vocab.sizes()["route"] - 1 >= 2
    assert routes["cases"] > 2 and routes["max_ratio"] <= 1
    route_shapes = {s["name"]: s["shape"] for s in factored["route"]["inputs"]}
    assert route_shapes["states"][:2] == [1, len(F.STREAMS) - 1]
    assert route_shapes["route_states"][0] == route_shapes["cur_cat"][0] == "routes"
    state = factored["state"]
    assert state["bytes_per_event"] == 4 * state["size"]
    assert state["layout"]["hidden"] == [0, run.spec["net"]["d_model"]]
    assert state["layout"]["day"][1] == state["size"]
    assert [o["name"] for o in factored["event"]["outputs"]] == ["state"]
    assert factored["event"]["outputs"][0]["shape"] == ["events", state["size"]]


def test_manifest_sha256_match_every_file(exported: Exported, tmp_path: Path) -> None:
    files = exported.manifest["files"]
    on_disk = {
        p.relative_to(exported.bundle).as_posix()
        for p in exported.bundle.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    assert set(files) == on_disk
    for rel, entry in files.items():
        assert hashlib.sha256((exported.bundle / rel).read_bytes()).hexdigest() == entry["sha256"]
    assert verify_bundle(exported.bundle) == []
    # a tampered copy is caught
    copy = tmp_path / "bundle"
    shutil.copytree(exported.bundle, copy)
    with (copy / "model.onnx").open("ab") as f:
        f.write(b"\0")
    assert verify_bundle(copy) == ["model.onnx: sha256 differs"]


# --- the graph -----------------------------------------------------------------------------


def test_graph_has_named_typed_inputs_with_dynamic_dims(exported: Exported) -> None:
    model = onnx.load(str(exported.bundle / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    int64, fp32 = onnx.TensorProto.INT64, onnx.TensorProto.FLOAT
    for value, spec in zip(model.graph.input, exported.manifest["schema"]["inputs"], strict=True):
        t = value.type.tensor_type
        assert value.name == spec["name"]
        assert t.elem_type == (int64 if spec["dtype"] == "int64" else fp32)
        assert [d.dim_param for d in t.shape.dim] == spec["shape"]
    specs = {s.name: s for s in input_specs([v.name for v in model.graph.input])}
    for stream in F.STREAMS:  # one shared K per stream
        dims = {
            tuple(d.dim_param for d in v.type.tensor_type.shape.dim)
            for v in model.graph.input
            if specs[v.name].stream == stream and specs[v.name].kind != "length"
        }
        assert dims == {("batch", f"k_{stream}")}


def test_served_graphs_run_each_gelu_as_one_node(exported: Exported) -> None:
    """The query and route graphs, after onnxscript's fusions for ONNX Runtime: every GELU
    one com.microsoft.Gelu (no Erf left); model.onnx keeps the default domain only."""
    for name in ("query.onnx", "route_query.onnx"):
        model = onnx.load(str(exported.bundle / name))
        ops = [(node.domain, node.op_type) for node in model.graph.node]
        assert ("com.microsoft", "Gelu") in ops, name
        assert not any(op == "Erf" for _, op in ops), name
        assert {o.domain for o in model.opset_import} >= {"", "com.microsoft"}
    whole = onnx.load(str(exported.bundle / "model.onnx"))
    assert {node.domain for node in whole.graph.node} <= {""}


def test_route_graph_multiplies_by_the_weights_without_copying_them(exported: Exported) -> None:
    """The route graph picks each slice's stream by an index computed from its inputs (the
    candidates): no matrix of the weights is gathered by it, a copy per slice on every call
    (an eighth of the graph's time on the CPU); the first streams' matrices are constants and
    the candidates' one matrix multiplies them all (network.matmul_n)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(exported.bundle / "route_query.onnx")))
    constant = {i.name for i in model.graph.initializer}
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    for v in model.graph.value_info:
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    gathers, copied = 0, []
    for node in model.graph.node:  # in topological order
        if all(not name or name in constant for name in node.input):
            constant.update(node.output)
        elif node.op_type == "Gather" and node.input[0] in constant:
            gathers += 1  # the small parameters (biases, norms) are picked so
            shape = shapes.get(node.input[0])
            if shape is None or (len(shape) >= 3 and all(d is None or d > 1 for d in shape[-2:])):
                copied.append((node.name, shape))
    assert gathers > 0  # the check sees the picks
    assert copied == []


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_parity_at_batch_sizes(run: TrainedRun, session: Any, head: Feeds, batch: int) -> None:
    _assert_parity(run.net, session, take(head, slice(0, batch)))


def test_parity_on_empty_and_full_histories(
    run: TrainedRun, session: Any, head: Feeds, validation: ValidationData
) -> None:
    specs = input_specs(run.spec["inputs"])
    empty = empty_histories(head, specs)
    assert not any(empty[f"{s}_length"].any() for s in F.STREAMS)
    _assert_parity(run.net, session, empty)
    forced = dict(head)
    for s in F.STREAMS:
        k = run.history[f"k_{s}"]
        forced[f"{s}_length"] = np.full_like(head[f"{s}_length"], k)  # no padding anywhere
    _assert_parity(run.net, session, forced)
    if len(validation.full_rows):  # real rows with every window full, where the log has them
        _assert_parity(run.net, session, validation.feeds(validation.full_rows[:64])[0])


@pytest.mark.parametrize("ks", [(1, 1, 1, 1), (3, 9, 4, 2), (5, 64, 3, 1), (40, 2, 6, 17)])
def test_graph_runs_at_other_history_lengths(
    run: TrainedRun, session: Any, head: Feeds, ks: tuple[int, int, int, int]
) -> None:
    specs = input_specs(run.spec["inputs"])
    sizes = dict(zip(F.STREAMS, ks, strict=True))
    feeds = resize_histories(take(head, slice(0, 7)), specs, sizes)
    for s, k in sizes.items():
        assert feeds[f"{s}_mcc"].shape == (7, k)
    _assert_parity(run.net, session, feeds)


def test_window_size_does_not_change_the_answer(run: TrainedRun, session: Any, head: Feeds) -> None:
    """Padding is masked: the graph gives the same probabilities for a window cut to the
    batch's longest history or left-padded beyond the trained K."""
    specs = input_specs(run.spec["inputs"])
    base = onnx_outputs(session, head)
    longest = {s: max(1, int(head[f"{s}_length"].max())) for s in F.STREAMS}
    beyond = {"card": 2 * run.history["k_card"], "issuer": 50, "route": 40, "card_merchant": 11}
    for sizes in (longest, beyond):
        got = onnx_outputs(session, resize_histories(head, specs, sizes))
        for name in base:
            np.testing.assert_allclose(got[name], base[name], rtol=RTOL, atol=ATOL)


def test_parity_sample_replays(exported: Exported, session: Any) -> None:
    sample = np.load(exported.bundle / "parity_sample.npz")
    feeds = {i.name: sample[i.name] for i in session.get_inputs()}
    got = onnx_outputs(session, feeds)
    for name in ("p_approve", "p_retry"):
        np.testing.assert_allclose(got[name], sample[name], rtol=RTOL, atol=ATOL)


def _readme_snippet(after: str, bundle: Path) -> str:
    """The first python block after `after` in export/README.md, aimed at `bundle`."""
    block = README.read_text().split(after, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    return block.replace('"export/default"', repr(str(bundle)))


def test_readme_snippets_run_on_the_bundle(exported: Exported) -> None:
    """The README's loading and verification code, as written, on this bundle."""
    loaded: dict[str, Any] = {}
    exec(
        compile(_readme_snippet("## Loading it with onnxruntime", exported.bundle), "", "exec"),
        loaded,
    )
    assert loaded["p_approve"].shape == (64,) and loaded["p_retry"].shape == (64, 8)
    exec(
        compile(_readme_snippet("Check a bundle after copying it", exported.bundle), "", "exec"), {}
    )


# --- variants ------------------------------------------------------------------------------


def test_int8_decision_is_recorded_and_applied(exported: Exported) -> None:
    int8 = exported.manifest["variants"]["int8"]
    assert isinstance(int8["shipped"], bool) and int8["reason"]
    criteria = Int8Criteria(**int8["criteria"])
    assert criteria == Int8Criteria(0.002, 0.005)
    assert decide(int8["fp32"], int8["int8"], criteria)[0] == int8["shipped"]
    shipped_file = exported.bundle / "model_int8.onnx"
    assert shipped_file.exists() == int8["shipped"]
    assert ("model_int8.onnx" in exported.manifest["files"]) == int8["shipped"]
    if int8["shipped"]:
        onnx.checker.check_model(onnx.load(str(shipped_file)))


def test_int8_decision_rule() -> None:
    fp32 = {"auroc": 0.80, "logloss": 0.300}
    criteria = Int8Criteria()
    assert decide(fp32, {"auroc": 0.7985, "logloss": 0.3014}, criteria)[0]
    shipped, reason = decide(fp32, {"auroc": 0.797, "logloss": 0.300}, criteria)
    assert not shipped and "AUROC drops" in reason
    shipped, reason = decide(fp32, {"auroc": 0.80, "logloss": 0.302}, criteria)
    assert not shipped and "log loss rises" in reason
    assert not decide(fp32, {"auroc": float("nan"), "logloss": 0.3}, criteria)[0]


def test_auroc_matches_torchmetrics() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.round(rng.random(500) * 0.5 + 0.3 * y, 2)  # rounded: many ties
    expected = float(binary_auroc(torch.from_numpy(p), torch.from_numpy(y)))
    assert auroc(p, y) == pytest.approx(expected, abs=1e-6)


def test_fp16_variant_checks_out_without_a_gpu(exported: Exported) -> None:
    fp16 = exported.manifest["variants"]["fp16"]
    assert fp16["shipped"] and fp16["file"] == "model_fp16.onnx"
    assert fp16["validated_on_gpu"] is False and "checked on CUDA hosts only" in fp16["note"]
    model = onnx.load(str(exported.bundle / "model_fp16.onnx"))
    onnx.checker.check_model(model, full_check=True)
    # float32 at the boundary (keep_io_types), float16 inside
    fp32, fp16_type = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    io = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert io["cur_log_amount"] == fp32 and io["p_approve"] == fp32 and io["p_retry"] == fp32
    assert io["cur_mcc"] == onnx.TensorProto.INT64
    assert any(i.data_type == fp16_type for i in model.graph.initializer)


# --- Triton --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "graph"),
    [("issuer_seq", None), ("issuer_seq_event", "event"), ("issuer_seq_query", "query")],
)
def test_triton_config_parses_and_matches_the_manifest(
    exported: Exported, model: str, graph: str | None
) -> None:
    """The whole network and the factored pair (two models: the state store sits between
    them), each with the graph the manifest describes."""
    m = exported.manifest
    root = exported.bundle / "triton" / model
    config = text_format.Parse((root / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.name == model and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 256
    triton_type = {"int64": mc.TYPE_INT64, "float32": mc.TYPE_FP32}
    sizes = {f"k_{s}": m["history"][f"k_{s}"] for s in F.STREAMS}
    sizes["k"] = max(sizes.values())  # the query graph's windows: right-aligned to the longest
    described = m["schema"] if graph is None else m["factored"][graph]
    for tensors, specs in (
        (config.input, described["inputs"]),
        (config.output, described["outputs"]),
    ):
        assert [t.name for t in tensors] == [s["name"] for s in specs]
        for t, s in zip(tensors, specs, strict=True):
            assert t.data_type == triton_type[s["dtype"]]
            # the batch (the event graph's events) is implicit in Triton: max_batch_size > 0
            assert s["shape"][0] == ("events" if graph == "event" else "batch")
            rest = [d if isinstance(d, int) else sizes[d] for d in s["shape"][1:]]
            if rest:
                assert list(t.dims) == rest and not t.HasField("reshape")
            else:  # (batch,) is dims [1] reshaped to []
                assert list(t.dims) == [1] and t.HasField("reshape") and not t.reshape.shape
    assert config.HasField("dynamic_batching")
    assert list(config.dynamic_batching.preferred_batch_size) == [16, 64]
    kinds = {g.kind for g in config.instance_group}
    assert kinds == {mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_GPU}
    file = m["model"]["file"] if graph is None else m["factored"][graph]["file"]
    copy = root / str(m["model"]["version"]) / "model.onnx"
    assert copy.read_bytes() == (exported.bundle / file).read_bytes()
    assert model == m["triton"]["model"] or model in m["triton"]["factored_models"]


# --- failures ------------------------------------------------------------------------------


def test_broken_export_fails_loudly(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph that drifts from the network is refused, naming the worst deviation. The
    graph is the session's own (re-exporting takes minutes); the network is made to drift
    from it instead, which the same parity check must catch."""
    forward = IssuerSeqNet.forward

    def drifted(self: IssuerSeqNet, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        p_approve, p_retry = forward(self, x)
        return p_approve * 0.99, p_retry

    def the_sessions_graph(*args: Any) -> onnx.ModelProto:
        net, inputs, outputs, example, path, opset = args  # export_onnx's arguments
        shutil.copy(exported.bundle / "model.onnx", path)
        return onnx.load(str(path))

    monkeypatch.setattr(IssuerSeqNet, "forward", drifted)
    monkeypatch.setattr(bundle_module, "export_onnx", the_sessions_graph)
    target = tmp_path / "bundle"
    settings = ExportSettings(
        run_dir=exported.run_dir, artifact_dir=target, parity_rows=500, int8=None, fp16=False
    )
    with pytest.raises(IssuerSeqError, match=r"worst deviation: case .*p_approve\[\d+\]"):
        export_bundle(settings)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_a_folder_that_is_not_a_bundle(
    exported: Exported, tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(IssuerSeqError, match="not an export bundle"):
        export_bundle(ExportSettings(run_dir=exported.run_dir, artifact_dir=tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_unfinished_run_and_unknown_inputs_are_errors(tmp_path: Path) -> None:
    with pytest.raises(IssuerSeqError, match="missing model.pt"):
        TrainedRun.load(tmp_path)
    with pytest.raises(IssuerSeqError, match="not part of this feature schema"):
        input_spec("card_favourite_colour")
    with pytest.raises(IssuerSeqError, match="not part of this feature schema"):
        input_spec("card_merchant_country_code")
    assert input_spec("card_length").dtype == "int64"
    assert input_spec("issuer_log_minutes_since").shape == ("batch", "k_issuer")
    # names that split two ways: the card's merchant country, the card-at-merchant's mcc
    assert (
        input_spec("card_merchant_country").stream,
        input_spec("card_merchant_country").feature,
    ) == ("card", "merchant_country")
    assert input_spec("card_merchant_mcc").shape == ("batch", "k_card_merchant")
