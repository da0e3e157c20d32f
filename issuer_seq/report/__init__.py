"""The comparison report: models side by side on accuracy, calibration, retry value and
latency (report.html, report.json, PNG figures), from evaluation.json and bench.json.

The measurements themselves are taken by `issuer_seq.bench`.
"""
