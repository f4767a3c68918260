"""The local endpoint's route table: ``routes.json``, its layout, atomic writes and reloads.

Shared by the router (:mod:`serving.router`), which follows the file, and the local endpoint
target (:mod:`adapters.endpoints.local.router_control`), which writes it. Plain Python, no web
framework.

Layout::

    {"schema": 1, "generation": 7,
     "models": {"limit_optimiser": {"variants": [
         {"name": "...", "version": "v4", "port": 41234, "weight": 1.0, ...}]}}}

Variants may carry more keys (pid, directory, hashes); the router ignores them. A route may
also carry ``experiment``, ``shadow`` and ``capture`` (:mod:`serving.experiment_routing`).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.experiment_routing import ExperimentRoute, parse_experiment

log = logging.getLogger("serving.router")

STATE_SCHEMA = 1
"""Version of the ``routes.json`` layout."""


@dataclass(frozen=True)
class Upstream:
    """One variant process of a model.

    Attributes:
        name: variant name (unique per process).
        model: model name.
        version: model version it serves.
        port: its loopback port.
        weight: share of traffic relative to the model's other variants (0: none).
        host: its address.
    """

    name: str
    model: str
    version: str
    port: int
    weight: float = 1.0
    host: str = "127.0.0.1"

    def describe(self) -> dict[str, Any]:
        """The JSON view of this variant."""
        return {
            "name": self.name,
            "version": self.version,
            "port": self.port,
            "weight": self.weight,
        }


@dataclass(frozen=True)
class RouteTable:
    """Every model's variants, as of one ``routes.json`` generation."""

    generation: int = 0
    models: dict[str, tuple[Upstream, ...]] = field(default_factory=dict)
    experiments: dict[str, ExperimentRoute] = field(default_factory=dict)
    """Models with an experiment, a shadow or capture on; the others have none."""


def empty_state() -> dict[str, Any]:
    """The content of a ``routes.json`` with no model."""
    return {"schema": STATE_SCHEMA, "generation": 0, "models": {}}


def parse_state(raw: Any) -> RouteTable:
    """Validate the content of ``routes.json``.

    Raises:
        ValueError: not the expected layout; the message says where.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
        raise ValueError("routes must be an object with a 'models' object")
    generation = raw.get("generation", 0)
    if not isinstance(generation, int) or generation < 0:
        raise ValueError("generation must be a non-negative integer")
    models: dict[str, tuple[Upstream, ...]] = {}
    experiments: dict[str, ExperimentRoute] = {}
    for model, route in raw["models"].items():
        variants = route.get("variants") if isinstance(route, dict) else None
        if not isinstance(variants, list):
            raise ValueError(f"models.{model}.variants must be a list")
        ups = []
        for i, v in enumerate(variants):
            where = f"models.{model}.variants[{i}]"
            if not isinstance(v, dict):
                raise ValueError(f"{where} must be an object")
            port, weight = v.get("port"), v.get("weight", 1.0)
            if not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"{where}.port must be a port number")
            if not isinstance(weight, int | float) or weight < 0:
                raise ValueError(f"{where}.weight must be a number >= 0")
            if not isinstance(v.get("name"), str) or not isinstance(v.get("version"), str):
                raise ValueError(f"{where} needs a name and a version")
            ups.append(
                Upstream(
                    name=v["name"],
                    model=model,
                    version=v["version"],
                    port=port,
                    weight=float(weight),
                    host=str(v.get("host", "127.0.0.1")),
                )
            )
        models[model] = tuple(ups)
        experiment = parse_experiment(f"models.{model}", route, {u.name for u in ups})
        if experiment.experiment_id or experiment.shadow or experiment.capture:
            experiments[model] = experiment
    return RouteTable(generation=generation, models=models, experiments=experiments)


def read_state(path: Path) -> dict[str, Any]:
    """The content of ``routes.json``; an empty state when the file does not exist."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return empty_state()
    parse_state(raw)
    return dict(raw)


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace ``routes.json`` atomically: the router sees the old file or the new, never half.

    The file is readable by its owner only (the deployer and the router run as one user).

    Raises:
        ValueError: ``state`` is not a valid route table (nothing is written).
    """
    parse_state(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        # Owner only: a running experiment's route holds the secret of its callers' hash.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
            json.dump(state, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class RouteFollower:
    """The routes of a state file, reloaded when the file changes (checked on each call)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.table = RouteTable()
        self.error: str | None = None
        self._key: tuple[int, int, int] | None = None

    def current(self) -> RouteTable:
        """The routes as of now; a missing file means no routes."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._key is not None:
                self.table, self._key, self.error = RouteTable(), None, None
            return self.table
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._key:
            self._key = key
            try:
                self.table = parse_state(json.loads(self.path.read_text()))
                self.error = None
            except (OSError, ValueError) as exc:
                # Keep serving the last good routes; the next write will be picked up.
                self.error = f"{self.path}: {exc}"
                log.error("ignoring unreadable routes: %s", self.error)
        return self.table
