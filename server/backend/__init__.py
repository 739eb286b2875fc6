"""Python-backend models that Triton runs (imported by the generated ``model.py`` shims).

They import ``triton_python_backend_utils``, which exists only inside Triton's Python stub.
"""
