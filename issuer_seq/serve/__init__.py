"""Serving: the scorer (numpy + onnxruntime, never torch), its state stores, the HTTP app."""
