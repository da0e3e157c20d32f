"""Evaluation: approval metrics of every model, retry policies and their value."""
