"""``LocalTarget``: the endpoint-target interface over the router and its variant processes.

It composes :class:`~adapters.endpoints.local.router_control.RouterControl` (the route table
and the router process), :class:`~adapters.endpoints.local.variants.Variants` (one process per
served version) and :class:`~adapters.endpoints.local.processes.ServingProcesses`; the
package docstring (:mod:`adapters.endpoints.local`) tells the deploy's steps.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.endpoints.local.processes import (
    ServingProcesses,
    aws_env,
    feedback_env,
    http_client,
    http_get,
    is_alive,
    read_json,
)
from adapters.endpoints.local.router_control import RouterControl, extras, routed
from adapters.endpoints.local.variants import VARIANT_INFO, VARIANTS, Variants, fetch
from core.endpoint import (
    Health,
    Progress,
    Resource,
    RolloutFailed,
    Serving,
    TrafficPlan,
    VersionToServe,
    parse_answer,
)

if TYPE_CHECKING:
    from adapters.store import LocalStore, S3Store
    from core.config import EndpointConfig, PlatformConfig
    from core.settings import Settings

ENDPOINT_DIR = "endpoint"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _quiet(_message: str) -> None:
    """A progress callback that says nothing."""


class LocalTarget:
    """Serve model versions from local processes behind a router (see the package docstring).

    Args:
        home: ``MLOPS_HOME``; state goes to ``home/endpoint``.
        store_uri: the model store (a path or ``s3://``).
        host: the router's bind address.
        port: the router's port.
        kms_key_id: the store's KMS key (S3 only).
        aws_endpoint_url: S3 endpoint (moto server in tests).
        aws_profile: AWS profile of the store (S3 only).
        aws_region: AWS region of the store (S3 only).
        python: interpreter that runs the router and the variants.
        ping_timeout: longest wait for a new variant's ``/ping``; default each model's
            ``endpoint.timeout_seconds``.
        drain_seconds: longest wait for requests in flight to an old variant.
        stop_seconds: SIGTERM to SIGKILL.
        router_seconds: longest wait for the router to start.
    """

    kind = "local"

    def __init__(
        self,
        *,
        home: Path,
        store_uri: str,
        host: str = "127.0.0.1",
        port: int = 8080,
        kms_key_id: str | None = None,
        aws_endpoint_url: str | None = None,
        aws_profile: str | None = None,
        aws_region: str | None = None,
        python: str = sys.executable,
        ping_timeout: float | None = None,
        drain_seconds: float = 30.0,
        stop_seconds: float = 15.0,
        router_seconds: float = 30.0,
    ) -> None:
        self.root = Path(home).expanduser().resolve() / ENDPOINT_DIR
        self.store_uri = store_uri
        self.kms_key_id = kms_key_id
        self.aws_endpoint_url = aws_endpoint_url
        self.ping_timeout = ping_timeout
        self.drain_seconds = drain_seconds
        self.processes = ServingProcesses(python, stop_seconds)
        # The router writes the experiment capture to the store: on S3 it needs AWS access.
        router_env = (
            aws_env(endpoint_url=aws_endpoint_url, profile=aws_profile, region=aws_region)
            if store_uri.startswith("s3://")
            else {}
        )
        router_env.update(feedback_env(store_uri, kms_key_id))
        self.router = RouterControl(
            self.root, host, port, self.processes, router_seconds, router_env
        )
        self.variants = Variants(self.root / VARIANTS, self.processes)
        self.last_timings: dict[str, float] = {}
        """Seconds each step of the last deploy took (``fetch``, ``start``, ``switch``...)."""

    @classmethod
    def from_settings(
        cls, settings: Settings, platform: PlatformConfig | None = None, **options: Any
    ) -> LocalTarget:
        """The local endpoint of ``settings`` (``MLOPS_HOME``, store, router host and port).

        Args:
            settings: where state, store and router are.
            platform: unused (the local endpoint has no tags or prices); accepted so every
                target is built the same way.
            **options: passed to the constructor (``ping_timeout``, ``drain_seconds``...).
        """
        return cls(
            home=settings.home_dir,
            store_uri=settings.store,
            host=settings.endpoint_host,
            port=settings.endpoint_port,
            kms_key_id=settings.kms_key_id,
            aws_endpoint_url=settings.aws_endpoint_url,
            aws_profile=settings.aws_profile,
            aws_region=settings.aws_region,
            **options,
        )

    @property
    def routes_file(self) -> Path:
        """``routes.json``, which the router follows."""
        return self.router.routes_file

    @property
    def variants_dir(self) -> Path:
        """Where variant directories live."""
        return self.variants.directory

    @property
    def url(self) -> str:
        """Base URL of the router, as a client on this machine reaches it."""
        return self.router.url

    def address(self, model: str) -> str:
        """Where to POST requests for ``model``."""
        return f"{self.url}/endpoints/{model}/invocations"

    # --- deploy ---------------------------------------------------------------------------------

    def deploy(self, target: VersionToServe, progress: Progress) -> Serving:
        """Serve ``target`` on the model's route; see the package docstring for the steps.

        Raises:
            RolloutFailed: the route still serves what it served before, and the new process
                and its directory are gone.
        """
        started = time.monotonic()
        with self.router.lock(f"model-{target.model}"):
            current = self.router.variants(target.model)
            if self._already_serves(current, target):
                progress(f"{target.model} already serves {target.version} on {self.url}")
                serving = self.describe(target.model)
                assert serving is not None
                return serving
            route = self.router.route(target.model)
            self.router.ensure(progress)
            timings = self._switch(target, current, progress, extras(route))
            # A promotion during an experiment ends it: the challenger and shadow go too.
            timings["drain"] = self._retire(target.model, routed(route), progress)
            timings["total"] = time.monotonic() - started
            self.last_timings = timings
            progress(
                f"{target.model} serves {target.version} at {self.address(target.model)} "
                f"(deploy {timings['total']:.1f}s: fetch {timings['fetch']:.1f}s, "
                f"start {timings['start']:.1f}s, switch {timings['switch'] * 1000:.0f} ms, "
                f"drain {timings['drain']:.2f}s)"
            )
        serving = self.describe(target.model)
        if serving is None or serving.version != target.version:
            raise RolloutFailed(
                "verify", f"after the switch the endpoint reports {serving and serving.version}"
            )
        return serving

    def _switch(
        self,
        target: VersionToServe,
        current: list[dict[str, Any]],
        progress: Progress,
        before_extras: dict[str, Any] | None = None,
    ) -> dict[str, float]:
        """Fetch, start and route to a new variant; return each step's seconds.

        Any failure undoes what was done (the old route back whole, experiment included; the
        new process and directory gone) and raises :class:`RolloutFailed` naming the step.
        """
        before = ", ".join(sorted({v["version"] for v in current})) or "nothing"
        instance = self.variants.create(target)
        timings: dict[str, float] = {}
        record: dict[str, Any] | None = None
        switched = False

        def undo() -> None:
            if switched:
                self.router.write(target.model, current or None, before_extras)
            if record is not None:
                self.processes.stop(record["pid"], record["token"])
            shutil.rmtree(instance, ignore_errors=True)

        step = "download"
        try:
            mark = time.monotonic()
            fetch(self._store(), target, instance, progress)
            timings["fetch"] = time.monotonic() - mark
            step, mark = "start", time.monotonic()
            record = self.variants.start(target, instance, self._ping_timeout(target), progress)
            timings["start"] = time.monotonic() - mark
            step, mark = "switch", time.monotonic()
            generation = self.router.write(
                target.model, [record], {"experiment": None, "shadow": None}
            )
            switched = True
            self.router.confirm(target.model, generation, [record["name"]])
            timings["switch"] = time.monotonic() - mark
        except RolloutFailed as exc:
            undo()
            exc.reason += f"; {target.model} still serves {before}"
            exc.args = (f"rollout failed at {exc.step}: {exc.reason}",)
            raise
        except Exception as exc:
            undo()
            raise RolloutFailed(step, f"{exc}; {target.model} still serves {before}") from exc
        except BaseException:  # Ctrl-C: undo, then let it through
            undo()
            raise
        progress(
            f"{target.model}: route switched to {record['name']} "
            f"({timings['switch'] * 1000:.0f} ms to the router's confirmation)"
        )
        return timings

    def _already_serves(self, current: list[dict[str, Any]], target: VersionToServe) -> bool:
        if not current or not self.router.alive():
            return False
        if any(
            v.get("version") != target.version or v.get("manifest_sha256") != target.manifest_sha256
            for v in current
        ):
            return False
        ping = self.router.ping()
        if ping is None or "foreign" in ping:
            return False
        return all(self.variants.healthy(v) for v in current)

    def _store(self) -> LocalStore | S3Store:
        from adapters.store import store_from_uri

        return store_from_uri(
            self.store_uri, kms_key_id=self.kms_key_id, endpoint_url=self.aws_endpoint_url
        )

    def _ping_timeout(self, target: VersionToServe) -> float:
        if self.ping_timeout is not None:
            return self.ping_timeout
        return float(target.endpoint.timeout_seconds)

    def _retire(self, model: str, old: list[dict[str, Any]], progress: Progress) -> float:
        """Drain, stop and delete the variants that no longer serve; return the drain time."""
        if not old:
            return 0.0
        drained = self.router.drain(model, {v["name"] for v in old}, self.drain_seconds)
        for variant in old:
            self.variants.discard(variant)
        progress(f"stopped {', '.join(v['name'] for v in old)} (drained in {drained:.2f}s)")
        return drained

    # --- what serves ----------------------------------------------------------------------------

    def describe(self, model: str) -> Serving | None:
        """What the model's route serves; None when it has none. Starts nothing.

        ``status`` is ``running`` when the router and every variant run, ``degraded`` when
        some variant does not, ``down`` when nothing can answer (``version`` is then None).
        """
        current = self.router.variants(model)
        if not current:
            return None
        router = self.router.alive()
        variants = {v["name"]: _variant_view(v) for v in current}
        live = [v for v in current if variants[v["name"]]["alive"]]
        if router and len(live) == len(current):
            status = "running"
        elif router and live:
            status = "degraded"
        else:
            status = "down"
        top = max(live, key=lambda v: float(v.get("weight", 0))) if router and live else None
        return Serving(
            model=model,
            endpoint_name=model,
            status=status,
            version=top.get("version") if top else None,
            address=self.address(model),
            config_name=",".join(v["name"] for v in current),
            variants=variants,
        )

    def health(self, model: str) -> Health | None:
        """The model's last minute as the router counted it (``GET /endpoints/{model}/health``).

        The router sees every invocation of every variant, retries included, so its window is
        the endpoint's as a caller sees it. None when the router does not answer or does not
        route the model (a request now could not be served either: ``describe`` says why).
        """
        response = http_get(f"{self.url}/endpoints/{model}/health")
        if response is None or response.status_code != 200:
            return None
        try:
            body = response.json()
            return Health(
                source="local /metrics",
                window_seconds=float(body["window_seconds"]),
                requests_per_second=float(body["requests_per_second"]),
                error_rate=None if body["error_rate"] is None else float(body["error_rate"]),
                p99_ms=None if body["p99_ms"] is None else float(body["p99_ms"]),
            )
        except (ValueError, KeyError, TypeError):  # something else answers on the port
            return None

    def invoke(self, model: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        """POST ``{"instances": records}`` through the router; return the parsed answer.

        Raises:
            RolloutFailed: (``smoke-test``) unreachable, a non-2xx answer, or not a JSON object.
        """
        import httpx

        try:
            with http_client(70.0) as client:
                response = client.post(self.address(model), json={"instances": records})
        except httpx.HTTPError as exc:
            raise RolloutFailed("smoke-test", f"cannot reach {self.address(model)}: {exc}") from exc
        return parse_answer(model, response.status_code, response.content)

    def monthly_cost(self, endpoint: EndpointConfig, platform: PlatformConfig) -> float | None:
        """Local processes cost nothing to rent."""
        return 0.0

    # --- experiments (adapters.endpoints.local.experiment) -------------------------------------

    def start_experiment(self, plan: TrafficPlan, progress: Progress) -> None:
        """Serve the challenger beside the champion as ``plan`` says, capture on for both arms.

        Raises:
            RolloutFailed: the champion serves 100 % and the challenger's process is gone.
        """
        from adapters.endpoints.local.experiment import LocalExperiments

        LocalExperiments(self).start(plan, progress)

    def stop_experiment(self, model: str, progress: Progress) -> None:
        """Champion back to 100 %, challenger stopped, capture kept; a no-op without one."""
        from adapters.endpoints.local.experiment import LocalExperiments

        LocalExperiments(self).stop(model, progress)

    def traffic(self, model: str) -> dict[str, Any] | None:
        """Mode, variants with weights and arms, shadow, experiment id; None if not served."""
        from adapters.endpoints.local.experiment import LocalExperiments

        return LocalExperiments(self).traffic(model)

    def capture_prefix(self, model: str) -> str:
        """``{store}/capture/{model}``: where the router writes the model's captured answers."""
        from adapters.layout import capture_prefix

        return self._store().url(capture_prefix(model))

    def overview(self) -> dict[str, Any]:
        """Router, routes and stray variant directories, for ``mlops endpoint status``."""
        info = self.router.info()
        try:
            state = self.router.state()
            error = None
        except ValueError as exc:
            state, error = {"models": {}, "generation": None}, f"{self.routes_file}: {exc}"
        models = {}
        for model in sorted(state["models"]):
            serving = self.describe(model)
            if serving is not None:
                models[model] = {
                    "status": serving.status,
                    "version": serving.version,
                    "address": serving.address,
                    "variants": serving.variants,
                }
        stray = [r.name for r in self.resources() if r.kind == "model" and not r.in_use]
        return {
            "url": self.url,
            "state_dir": str(self.root),
            "router": {
                "running": self.router.alive(),
                "pid": info.get("pid"),
                "started_at": info.get("started_at"),
                "log": str(self.router.log_file),
            },
            "generation": state.get("generation"),
            "models": models,
            "stray_variants": stray,
            "error": error,
        }

    # --- cleanup --------------------------------------------------------------------------------

    def resources(self) -> list[Resource]:
        """Each model's route (``endpoint``) and each variant directory (``model``).

        A variant directory is in use when a route names it; any other (left by a deploy that
        was killed, say) is deletable, with its process if one still runs.
        """
        state = self.router.state()
        in_use = {v["name"] for route in state["models"].values() for v in routed(route)}
        found: list[Resource] = []
        for model in sorted(state["models"]):
            serving = self.describe(model)
            if serving is not None:
                found.append(_route_resource(serving))
        for path, info in self.variants.on_disk():
            found.append(_variant_resource(path, info or {}, path.name in in_use))
        return found

    def delete(self, resource: Resource) -> None:
        """Delete a route (``endpoint``) or an unused variant directory (``model``).

        Raises:
            ValueError: the variant is in use by a route (checked now), or an unknown kind.
        """
        if resource.kind == "endpoint":
            self.remove(resource.model)
            return
        if resource.kind != "model" or not _NAME.match(resource.name):
            raise ValueError(f"cannot delete {resource.kind} {resource.name!r}")
        # The model's lock first, as deploy takes it: a variant being started (no route yet,
        # maybe no variant.json yet) is never taken for an unused one.
        with self.router.lock(f"model-{resource.model}"), self.router.lock("routes"):
            state = self.router.state()
            names = {v["name"] for r in state["models"].values() for v in routed(r)}
            if resource.name in names:
                raise ValueError(f"variant {resource.name} is in use by a route")
            path = self.variants_dir / resource.name
            info = read_json(path / VARIANT_INFO) or {}
            self.variants.discard({**info, "dir": str(path)})

    def remove(self, model: str, progress: Progress | None = None) -> None:
        """Drop the model's route and stop its variants (a rollout whose endpoint was new)."""
        with self.router.lock(f"model-{model}"):
            current = routed(self.router.route(model))
            if not current:
                return
            self.router.write(model, None)
            self._retire(model, current, progress or _quiet)

    def stop(self, progress: Progress | None = None) -> list[str]:
        """Stop the router and every variant; delete the routes and variant directories.

        Returns:
            What was stopped, one line each.
        """
        stopped: list[str] = []
        with self.router.lock("routes"):
            for record in self._every_variant():
                if self.variants.discard(record):
                    stopped.append(f"variant {record.get('name')} (pid {record.get('pid')})")
            for path, _info in self.variants.on_disk():
                self.variants.remove_dir(path)
            self.routes_file.unlink(missing_ok=True)
        pid = self.router.stop()
        if pid is not None:
            stopped.append(f"router on {self.url} (pid {pid})")
        for line in stopped:
            (progress or _quiet)(f"stopped {line}")
        return stopped

    def _every_variant(self) -> list[dict[str, Any]]:
        """The records of every variant: on a route, or only in a directory's variant.json."""
        try:
            state = self.router.state()
        except ValueError:
            state = {"models": {}}
        records = [v for r in state["models"].values() for v in routed(r)]
        on_route = {r["name"] for r in records}
        records += [
            info
            for _path, info in self.variants.on_disk()
            if info and info.get("name") not in on_route
        ]
        return records


def _variant_view(record: dict[str, Any]) -> dict[str, Any]:
    """A route's variant record as ``describe`` reports it: with ``alive`` checked now."""
    return {
        "version": record.get("version"),
        "weight": record.get("weight"),
        "port": record.get("port"),
        "pid": record.get("pid"),
        "alive": is_alive(record.get("pid"), record.get("token")),
        "dir": record.get("dir"),
        "started_at": record.get("started_at"),
    }


def _route_resource(serving: Serving) -> Resource:
    return Resource(
        "endpoint",
        serving.model,
        serving.model,
        serving.version,
        True,
        {
            "status": serving.status,
            "address": serving.address,
            "variants": sorted(serving.variants),
            "monthly_cost_usd": 0.0,
            "idle_days": None,
        },
    )


def _variant_resource(path: Path, info: dict[str, Any], in_use: bool) -> Resource:
    return Resource(
        "model",
        path.name,
        str(info.get("model") or path.name.rsplit("-", 3)[0]),
        info.get("version"),
        in_use,
        {
            "dir": str(path),
            "pid": info.get("pid"),
            "port": info.get("port"),
            "running": is_alive(info.get("pid"), info.get("token")),
        },
    )
