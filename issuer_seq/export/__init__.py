"""ONNX export of a trained run into a serving bundle (`issuer-seq export`).

    run_dir (model.pt, model_spec.json, metrics.json, config.yaml)
      -> model.onnx (dynamo exporter: named typed inputs, dynamic batch and history lengths)
      -> parity against PyTorch on validation rows and edge cases (fails loudly)
      -> variants: int8 (shipped only if accurate enough), fp16 (for CUDA hosts)
      -> Triton model repository, parity sample, manifest.json with checksums

Each step is its own module; `bundle.export_bundle` runs them in order.
"""

from issuer_seq.export.bundle import ExportSettings, export_bundle

__all__ = ["ExportSettings", "export_bundle"]
