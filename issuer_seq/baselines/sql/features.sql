-- Point-in-time baseline features: one output row per row of `events`, in `_rn` order.
--
-- Input `events` (registered by issuer_seq.baselines.sql_features): one row per attempt of
-- a validated log, with `_rn` (its position), `t` (BIGINT epoch seconds, the timestamp
-- floored to the second), `ts` (TIMESTAMP, UTC, no time zone) and `cause` (the response
-- code's issuer_seq.rules.Cause).
--
-- The point-in-time rule: a history aggregate of an attempt at second t covers attempts of
-- the same card (issuer, card x merchant) with t - lag - W <= t' < t - lag, i.e. the frame
-- `RANGE BETWEEN (lag + W) PRECEDING AND (lag + 1) PRECEDING` over integer seconds. Attempts
-- at the same second as the scored one (itself included) are never history. Frames order
-- by integer seconds rather than by a TIMESTAMP with INTERVAL offsets because that is the
-- form every engine accepts (BigQuery only allows numeric RANGE offsets), and because it is
-- the transformer's rule (whole seconds, docs/data.md).
--
-- Placeholders (dollar-brace names) are filled by sql_features.render_sql: one block of
-- card_window.sql / issuer_window.sql / issuer_route_window.sql / route_window.sql per trailing
-- window, their WINDOW definitions, the lag, and the longest window's label. Helper columns start with `_` and are dropped.

WITH base AS (
    SELECT
        _rn, t, ts, card_id, issuer_id, merchant_id, payment_id, attempt, amount, mcc,
        issuer_country, merchant_country, currency, network, card_type, initiator,
        is_recurring, three_ds, response_code, advice_code, cause, route,
        -- approval is the label's definition (code 00), not the cause `approved`
        CASE WHEN response_code = '00' THEN 1 ELSE 0 END AS is_ok,
        CASE WHEN cause = 'funds' THEN 1 ELSE 0 END AS is_funds,
        CASE WHEN cause = 'limit' THEN 1 ELSE 0 END AS is_limit,
        CASE WHEN cause = 'generic' THEN 1 ELSE 0 END AS is_generic,
        CASE WHEN cause = 'technical' THEN 1 ELSE 0 END AS is_technical,
        CASE WHEN cause = 'sca' THEN 1 ELSE 0 END AS is_sca,
        CASE WHEN cause = 'data' THEN 1 ELSE 0 END AS is_data,
        CASE WHEN cause = 'hard' THEN 1 ELSE 0 END AS is_hard,
        CASE WHEN response_code = '00' THEN amount END AS ok_amount
    FROM events
),

-- A total order that agrees with time, so "the last earlier attempt" is one row even when
-- several share its second (the later row of the log wins, as in the transformer's index).
ordered AS (
    SELECT base.*, ROW_NUMBER() OVER (ORDER BY t, _rn) AS _seq
    FROM base
),

hist AS (
    SELECT
        _rn,
${card_columns}
${issuer_columns}
${issuer_route_columns}
${route_columns}
        -- whole history before the lag: recency of events, and which row came last
        MAX(_seq) OVER card_all AS _card_prev_seq,
        MAX(t) OVER card_all AS _card_last_t,
        MAX(CASE WHEN is_ok = 1 THEN t END) OVER card_all AS _card_last_ok_t,
        MAX(CASE WHEN is_ok = 0 THEN t END) OVER card_all AS _card_last_decline_t,
        MAX(CASE WHEN is_funds = 1 THEN t END) OVER card_all AS _card_last_funds_t,
        MAX(CASE WHEN is_hard = 1 THEN t END) OVER card_all AS _card_last_hard_t,
        MAX(CASE WHEN is_ok = 1 THEN t END) OVER issuer_all AS _issuer_last_ok_t,
        MAX(CASE WHEN is_ok = 0 THEN t END) OVER issuer_all AS _issuer_last_decline_t,
        MAX(CASE WHEN is_technical = 1 THEN t END) OVER issuer_all AS _issuer_last_technical_t,
        -- this card at this merchant: subscriptions, cancellations, a customer trying again
        MAX(_seq) OVER card_merchant_all AS _cm_prev_seq,
        COUNT(*) OVER card_merchant_all AS cm_n_all,
        AVG(CAST(is_ok AS DOUBLE)) OVER card_merchant_all AS cm_approval_rate_all
    FROM ordered
    WINDOW
        card_all AS (
            PARTITION BY card_id ORDER BY t
            RANGE BETWEEN UNBOUNDED PRECEDING AND ${lag_end} PRECEDING
        ),
        issuer_all AS (
            PARTITION BY issuer_id ORDER BY t
            RANGE BETWEEN UNBOUNDED PRECEDING AND ${lag_end} PRECEDING
        ),
        card_merchant_all AS (
            PARTITION BY card_id, merchant_id ORDER BY t
            RANGE BETWEEN UNBOUNDED PRECEDING AND ${lag_end} PRECEDING
        ),
${window_definitions}
)

SELECT
    o._rn,
    -- the current attempt: everything known before it is sent (never its outcome)
    o.amount,
    LN(1 + o.amount) AS log_amount,
    o.attempt,
    CASE WHEN o.is_recurring THEN 1 ELSE 0 END AS is_recurring,
    CASE WHEN o.three_ds THEN 1 ELSE 0 END AS three_ds,
    CASE WHEN o.issuer_country <> o.merchant_country THEN 1 ELSE 0 END AS cross_border,
    CAST(FLOOR(MOD(o.t, 86400) / 3600.0) AS INTEGER) AS hour_of_day,
    -- 1970-01-01 was a Thursday: Monday = 0
    CAST(MOD(FLOOR(o.t / 86400.0) + 3, 7) AS INTEGER) AS day_of_week,
    CAST(EXTRACT(DAY FROM o.ts) AS INTEGER) AS day_of_month,
    o.mcc,
    o.issuer_country,
    o.merchant_country,
    o.currency,
    o.network,
    o.card_type,
    o.initiator,
    CAST(o.issuer_id AS VARCHAR) AS issuer_id,
    -- the acquirer connection (NULL in a log without routes: one route)
    CAST(o.route AS VARCHAR) AS route,
    -- trailing windows and helper columns
    h.*,
    o.amount / NULLIF(h.card_amount_mean_${longest}, 0) AS amount_rel_card_mean_${longest},
    o.amount / NULLIF(h.card_max_approved_amount_${longest}, 0)
        AS amount_rel_card_max_approved_${longest},
    -- recency (seconds; NULL when there is no such earlier event)
    o.t - h._card_last_t AS card_secs_since_last,
    o.t - h._card_last_ok_t AS card_secs_since_approval,
    o.t - h._card_last_decline_t AS card_secs_since_decline,
    o.t - h._card_last_funds_t AS card_secs_since_funds,
    o.t - h._card_last_hard_t AS card_secs_since_hard,
    o.t - h._issuer_last_ok_t AS issuer_secs_since_approval,
    o.t - h._issuer_last_decline_t AS issuer_secs_since_decline,
    o.t - h._issuer_last_technical_t AS issuer_secs_since_technical,
    -- the card's last earlier attempt (any merchant) and at this merchant
    lc.response_code AS card_last_response_code,
    lc.cause AS card_last_cause,
    lc.advice_code AS card_last_advice_code,
    lm.response_code AS cm_last_response_code,
    o.t - lm.t AS cm_secs_since_last,
    -- the previous attempt of this payment (a retry's decline), if it is already history
    p.response_code AS prev_response_code,
    p.cause AS prev_cause,
    p.advice_code AS prev_advice_code,
    o.t - p.t AS secs_since_prev_attempt
FROM ordered AS o
JOIN hist AS h ON h._rn = o._rn
LEFT JOIN ordered AS lc ON lc._seq = h._card_prev_seq
LEFT JOIN ordered AS lm ON lm._seq = h._cm_prev_seq
LEFT JOIN ordered AS p
    ON p.payment_id = o.payment_id AND p.attempt = o.attempt - 1 AND p.t < o.t - ${lag}
ORDER BY o._rn
