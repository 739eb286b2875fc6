"""The ``cxr`` console command: one entry point, each sub-command loaded only when used."""
