"""The synthetic payments world: issuers, cards, merchants, a logged retry policy, and truth."""

from issuer_seq.simulate.generate import SimConfig, simulate
from issuer_seq.simulate.world import WorldParams

__all__ = ["SimConfig", "WorldParams", "simulate"]
