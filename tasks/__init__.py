"""Prefect tasks: each stage of the pipeline as a small typed function over core and adapters."""
