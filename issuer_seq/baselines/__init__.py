"""Baselines the transformer is compared with.

- `sql_features`: point-in-time aggregates per card and issuer, in portable SQL (DuckDB);
- `trees`: LightGBM and XGBoost on them; `linear`: logistic regression;
- `rates`: the issuer x MCC historical approval rate and the oracle (synthetic truth);
- `retry_trees`: a tree model of retry success for every delay of the grid;
- `search`: a small hyperparameter search by validation log loss;
- `base_rate`: the issuer x MCC rate over the transformer's event store;
- `online`: the LightGBM baseline served online (`sql_features`' row from in-memory state);
- `saved_lightgbm`: where evaluate saves its LightGBM model, and the one `issuer-seq bench`
  serves (that one, or one fitted once and saved).

Every model follows the `Baseline` protocol: `fit(train, val)`, `predict_proba(frame)`.
See docs/baselines.md.
"""

from issuer_seq.baselines.protocol import LABEL, TXN_ID, WEIGHT, Baseline

__all__ = ["LABEL", "TXN_ID", "WEIGHT", "Baseline"]
