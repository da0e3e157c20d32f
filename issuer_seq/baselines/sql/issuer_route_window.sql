        -- issuer x the attempt's route, last ${label}: volume and approval rate (acquirer
        -- outages, acquirers' risk filters, an issuer declining through one route)
        COUNT(*) OVER issuer_route_${label} AS issuer_route_n_${label},
        AVG(CAST(is_ok AS DOUBLE)) OVER issuer_route_${label}
            AS issuer_route_approval_rate_${label},
