"""Route choice: policies over a merchant's acquirer connections, their value with the truth,
off-policy estimates from logged routes and propensities, and the reaction to issuer episodes.

See docs/routing.md. `routes` holds the route table, `policies` the policies (static,
success-rate, expected value), `value` the truth valuation (and where the oracle's uplift
lies), `ope` the off-policy estimators, `compare` the estimates beside the truth, `reaction`
the episode-reaction metric.
"""

from issuer_seq.routing.compare import ope_against_truth
from issuer_seq.routing.ope import Estimate, estimate, estimate_all, logged_rewards
from issuer_seq.routing.policies import (
    RouteChoice,
    SuccessRateConfig,
    SuccessRatePolicy,
    choose_route,
    route_values,
    sample_routes,
    static_policy,
    success_rate_policy,
)
from issuer_seq.routing.reaction import episode_reactions, median_reaction_hours
from issuer_seq.routing.routes import NOT_HELD, RouteTable
from issuer_seq.routing.value import (
    attempt_conditions,
    expected_outcomes,
    truth_matrix,
    uplift_by_condition,
    value_policies,
)

__all__ = [
    "NOT_HELD",
    "Estimate",
    "RouteChoice",
    "RouteTable",
    "SuccessRateConfig",
    "SuccessRatePolicy",
    "attempt_conditions",
    "choose_route",
    "episode_reactions",
    "estimate",
    "estimate_all",
    "expected_outcomes",
    "logged_rewards",
    "median_reaction_hours",
    "ope_against_truth",
    "route_values",
    "sample_routes",
    "static_policy",
    "success_rate_policy",
    "truth_matrix",
    "uplift_by_condition",
    "value_policies",
]
