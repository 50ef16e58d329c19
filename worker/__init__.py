"""Celery GPU workers: claim a job in the database, run the compression pipeline, push the result."""
