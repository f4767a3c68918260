"""A skops archive written canonically: the same fitted estimator gives the same bytes.

``skops.io.dumps`` (0.16) has no reproducible mode, and its zip differs on every call in four
ways that say nothing about the model: each member carries the wall-clock time it was written;
each array is a member named ``<id(array)>.npy``, and each node of ``schema.json`` records
``"__id__": id(obj)``, both memory addresses of the saving process; and a structured array
with padding between its fields (scikit-learn's tree nodes: 57 bytes of fields in a 64-byte
record) is written with whatever the padding bytes held in memory. So a model's file, and the
``model_contents_sha256`` of every version that holds it, changed from one save to the next,
and the same training run under two task runners published different bytes.

:func:`canonical_skops` rewrites the archive skops wrote: ids and member names are renumbered
in the order ``schema.json`` first mentions them (skops writes the schema in the estimator's
attribute order, so that order is the model's, not the process's), equal ids stay equal (skops
uses them to rebuild shared objects once), and every member gets a fixed timestamp and
permissions; a structured array is written again from a zero-filled copy of its fields. Loading
is skops' own ``load`` with its trusted-types audit, unchanged: the rewrite changes names and
padding only, never a node's type or a field's value.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import PurePosixPath
from typing import Any

import numpy as np

SCHEMA = "schema.json"
"""skops' table of contents inside the archive."""

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip header can hold
_MODE = 0o100644 << 16  # a regular file, rw-r--r--


def _member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3  # Unix, whichever system wrote it
    info.external_attr = _MODE
    return info


def _zero_padding(body: bytes) -> bytes:
    """An ``.npy`` member again, with the padding of a structured dtype zeroed (else as is)."""
    array = np.load(io.BytesIO(body), allow_pickle=False)
    if array.dtype.names is None:
        return body
    # np.zeros is zero-filled memory, padding included; copy field by field, not the records.
    fortran = array.flags.f_contiguous and not array.flags.c_contiguous
    clean = np.zeros(array.shape, dtype=array.dtype, order="F" if fortran else "C")
    for name in array.dtype.names:
        clean[name] = array[name]
    out = io.BytesIO()
    np.save(out, clean, allow_pickle=False)
    return out.getvalue()


def _renumber(node: Any, ids: dict[int, int], files: dict[str, str]) -> None:
    """Replace, in place and in document order, each ``__id__`` and ``file`` of the schema."""
    if isinstance(node, list):
        for item in node:
            _renumber(item, ids, files)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key == "__id__" and isinstance(value, int):
            # From 1: skops' loader treats a falsy id as "not shared".
            node[key] = ids.setdefault(value, len(ids) + 1)
        elif key == "file" and isinstance(value, str):
            node[key] = files.setdefault(value, f"{len(files):06d}{PurePosixPath(value).suffix}")
        else:
            _renumber(value, ids, files)


def canonical_skops(data: bytes) -> bytes:
    """The archive ``data`` (from ``skops.io.dumps``) with its per-save parts made canonical.

    Raises:
        ValueError: the archive has no ``schema.json``, or members the schema does not name
            (a skops format this code does not know: better refused than silently dropped).
    """
    with zipfile.ZipFile(io.BytesIO(data)) as src:
        names = set(src.namelist())
        if SCHEMA not in names:
            raise ValueError(f"not a skops archive: no {SCHEMA} among {sorted(names)[:5]}")
        schema = json.loads(src.read(SCHEMA))
        ids: dict[int, int] = {}
        files: dict[str, str] = {}
        _renumber(schema, ids, files)
        if names - {SCHEMA} != set(files):
            unknown = sorted(names - {SCHEMA} - set(files))[:5]
            missing = sorted(set(files) - names)[:5]
            raise ValueError(
                f"skops archive: members {unknown} not named by {SCHEMA}, or named and "
                f"missing {missing}"
            )
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as dst:
            for old, new in sorted(files.items(), key=lambda pair: pair[1]):
                body = src.read(old)
                if new.endswith(".npy"):
                    body = _zero_padding(body)
                dst.writestr(_member(new), body)
            dst.writestr(_member(SCHEMA), json.dumps(schema, indent=2))
    return out.getvalue()
