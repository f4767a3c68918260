"""Prefect flows (retrain, rollout, cleanup, monitor): thin wiring of the tasks, step by step."""
