"""Online ranker (FastAPI): Feast online features + the promoted CTR model; new-item inference."""
