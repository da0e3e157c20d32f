"""The synthetic payments world: issuers, cards, merchants, routes, logged retry and routing
policies, and truth."""

from issuer_seq.simulate.generate import SimConfig, simulate
from issuer_seq.simulate.routes import Acquirer, RouteParams
from issuer_seq.simulate.world import WorldParams

__all__ = ["Acquirer", "RouteParams", "SimConfig", "WorldParams", "simulate"]
