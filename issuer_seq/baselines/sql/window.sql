        ${name} AS (
            PARTITION BY ${partition} ORDER BY t
            RANGE BETWEEN ${start} PRECEDING AND ${lag_end} PRECEDING
        )
