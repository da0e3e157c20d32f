        -- issuer, last ${label}: volume, approval rate, cause shares (issuers differ in size
        -- by orders of magnitude, so shares compare across issuers where counts do not)
        COUNT(*) OVER issuer_${label} AS issuer_n_${label},
        AVG(CAST(is_ok AS DOUBLE)) OVER issuer_${label} AS issuer_approval_rate_${label},
        AVG(CAST(is_funds AS DOUBLE)) OVER issuer_${label} AS issuer_funds_share_${label},
        AVG(CAST(is_limit AS DOUBLE)) OVER issuer_${label} AS issuer_limit_share_${label},
        AVG(CAST(is_generic AS DOUBLE)) OVER issuer_${label} AS issuer_generic_share_${label},
        AVG(CAST(is_technical AS DOUBLE)) OVER issuer_${label}
            AS issuer_technical_share_${label},
        AVG(CAST(is_sca AS DOUBLE)) OVER issuer_${label} AS issuer_sca_share_${label},
        AVG(CAST(is_data AS DOUBLE)) OVER issuer_${label} AS issuer_data_share_${label},
        AVG(CAST(is_hard AS DOUBLE)) OVER issuer_${label} AS issuer_hard_share_${label},
