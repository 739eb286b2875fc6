"""``cxr bench``: benchmarks, on top of everything else (they build throw-away models, serve them
and load them)."""
