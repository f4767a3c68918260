"""The model store's errors: one module that imports nothing, so every adapter may use them."""

from __future__ import annotations

__all__ = ["BucketNotReady", "KeyNotFound", "ObjectTooLarge", "PreconditionFailed", "StoreError"]


class StoreError(RuntimeError):
    """The store could not do what was asked."""


class KeyNotFound(StoreError, KeyError):
    """The key does not exist."""


class PreconditionFailed(StoreError):
    """A conditional write lost: the key already exists, or changed since it was read."""


class ObjectTooLarge(StoreError):
    """An object is larger than the caller allows; nothing past the limit was read."""


class BucketNotReady(StoreError):
    """The store's bucket is missing or not set up: ``mlops store setup`` first."""
