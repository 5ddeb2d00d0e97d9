"""One module per scenario of the suite; each exposes `run(ctx) -> dict` (see common.py)."""
