"""Baselines the transformer is compared with."""
