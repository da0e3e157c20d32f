"""The benchmarks behind `issuer-seq bench` (docs/evaluation.md#issuer-seq-bench).

- `scorers`: every scorer arm side by side on the same replayed requests (the transformer's
  runtimes and size variants, the LightGBM baseline's online scorer): single-request
  latency, batch throughput, time per stage, a profile;
- `http`: the real service (`issuer-seq serve`) on loopback at a fixed request rate;
- `sequences`: building point-in-time histories vs the straightforward pandas groupby;
- `pipeline`: the training input pipeline vs pre-built tensors in memory;
- `targets`: the design targets (conf/bench.yaml `targets`) checked against the measurements.

With commands/ and report/, this package is the top layer: it may import any layer below,
and nothing below imports it.
"""
