        -- the attempt's route, every issuer, last ${label}: volume and approval rate (an
        -- acquirer's outage or risk filter declines every card it carries)
        COUNT(*) OVER route_${label} AS route_n_${label},
        AVG(CAST(is_ok AS DOUBLE)) OVER route_${label} AS route_approval_rate_${label},
