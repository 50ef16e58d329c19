"""The job service's HTTP API (FastAPI) and its shared data layer (settings, database, models)."""
