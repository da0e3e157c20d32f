"""issuer_seq: sequence models of card-issuer behaviour for approval and retry decisions."""

__version__ = "0.1.0"
