"""One adapter per outside system: source database, store and its layout, MLflow, endpoints.

Clients and credentials are built inside the adapters from settings, never at import time.
"""
