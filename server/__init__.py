"""Serving: the Triton model repository, the embedded server, and its Python-backend models."""
