"""Experiments on the local endpoint: a challenger variant beside the champion on one route.

The route table already holds several weighted variants per model; an experiment is that
mechanism with two more keys the router reads (:mod:`serving.experiment_routing`):

- ``ab``: the champion's variant keeps its process at weight ``100 - share``, the challenger's
  new variant gets weight ``share``; ``experiment.arms`` names which is which.
- ``shadow``: the champion answers everything (weight 1); the challenger's variant is the
  route's ``shadow`` with ``percent = share``: the router copies that share of the requests
  to it and discards its answers.

The route's ``experiment`` also carries a secret drawn for this experiment, the key of the
callers' sticky hash, and whether callers may name a variant (``allow_target_variant``); the
router never shows the secret (nor does :meth:`LocalExperiments.traffic`).

Both arms' answers are captured under ``{store}/capture/{model}`` (SageMaker's Data Capture
layout, :mod:`serving.capture`). Starting is a deploy of the challenger without the swap:
download and verify, start the process, smoke-test it on its own port (through the router the
smoke request would be captured as experiment data), write the route, confirm the router serves
it. Any failure writes the route back as it was, stops the new process and deletes its
directory: the champion serves 100 %. Stopping puts the champion's variant back alone (capture
stays on), then drains and stops the challenger's.
"""

from __future__ import annotations

import secrets
import shutil
from typing import TYPE_CHECKING, Any

from adapters.endpoints.local.processes import http_client
from adapters.endpoints.local.router_control import extras, routed
from adapters.endpoints.local.variants import fetch
from adapters.endpoints.plan import check_plan
from core.endpoint import Progress, RolloutFailed, TrafficPlan, parse_answer

if TYPE_CHECKING:
    from adapters.endpoints.local.target import LocalTarget


class LocalExperiments:
    """Start, stop and describe experiments on a :class:`LocalTarget`'s routes."""

    def __init__(self, target: LocalTarget) -> None:
        self.target = target
        self.router = target.router
        self.variants = target.variants

    def start(self, plan: TrafficPlan, progress: Progress) -> None:
        """Serve the challenger beside the champion as ``plan`` says (see the module docstring).

        Raises:
            RolloutFailed: the champion serves 100 % again and nothing started is left.
        """
        check_plan(plan)
        with self.router.lock(f"model-{plan.model}"):
            route = self.router.route(plan.model)
            current = list((route or {}).get("variants", []))
            if not current:
                raise RolloutFailed("prepare", f"{plan.model} is not served on the local endpoint")
            running = (route or {}).get("experiment")
            if running or (route or {}).get("shadow"):
                experiment_id = (running or {}).get("id", "?")
                raise RolloutFailed(
                    "prepare", f"{plan.model} already runs experiment {experiment_id}"
                )
            versions = sorted({v["version"] for v in current})
            if versions != [plan.champion.version]:
                raise RolloutFailed(
                    "prepare",
                    f"{plan.model} serves {', '.join(versions)}, not the champion "
                    f"{plan.champion.version}",
                )
            self.router.ensure(progress)
            self._start(plan, current, extras(route), progress)
        progress(
            f"{plan.model}: experiment {plan.experiment_id} runs ({plan.mode}, "
            f"{plan.challenger.version} at {plan.share_percent:g} %, champion "
            f"{plan.champion.version}); capture to {self.target.capture_prefix(plan.model)}"
        )

    def _start(
        self,
        plan: TrafficPlan,
        current: list[dict[str, Any]],
        before: dict[str, Any],
        progress: Progress,
    ) -> None:
        challenger = plan.challenger
        instance = self.variants.create(challenger)
        record: dict[str, Any] | None = None
        switched = False

        def undo() -> None:
            if switched:
                self.router.write(plan.model, current, before)
            if record is not None:
                self.target.processes.stop(record["pid"], record["token"])
            shutil.rmtree(instance, ignore_errors=True)

        step = "download"
        try:
            fetch(self.target._store(), challenger, instance, progress)
            step = "start"
            record = self.variants.start(
                challenger, instance, self.target._ping_timeout(challenger), progress
            )
            step = "smoke-test"
            self._smoke(plan, record)
            step = "switch"
            variants, extra = self._route(plan, current, record)
            generation = self.router.write(plan.model, variants, extra)
            switched = True
            self.router.confirm(plan.model, generation, [v["name"] for v in variants])
        except BaseException as exc:
            undo()
            if isinstance(exc, RolloutFailed):
                exc.reason += f"; {plan.model} serves {plan.champion.version} at 100 %"
                exc.args = (f"rollout failed at {exc.step}: {exc.reason}",)
                raise
            if not isinstance(exc, Exception):  # Ctrl-C: undone, let it through
                raise
            raise RolloutFailed(
                step, f"{exc}; {plan.model} serves {plan.champion.version} at 100 %"
            ) from exc

    def _route(
        self, plan: TrafficPlan, current: list[dict[str, Any]], record: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The route's variants and extras for ``plan``, with ``record`` as the challenger."""
        champion = current[0]
        arms = {champion["name"]: "champion"}
        capture = {
            "uri": self.target.capture_prefix(plan.model),
            "endpoint": plan.model,
            "kms_key_id": self.target.kms_key_id,
        }
        extra: dict[str, Any] = {"capture": {k: v for k, v in capture.items() if v}}
        if plan.mode == "ab":
            arms[record["name"]] = "challenger"
            variants = [
                {**champion, "weight": 100.0 - plan.share_percent},
                {**record, "weight": plan.share_percent},
            ]
            extra["shadow"] = None
        else:
            variants = [{**champion, "weight": 1.0}]
            extra["shadow"] = {**record, "percent": plan.share_percent}
        extra["experiment"] = {
            "id": plan.experiment_id,
            "mode": plan.mode,
            "arms": arms,
            # The callers' sticky hash is keyed by this, new per experiment, read by the router
            # only: a caller cannot compute which key lands on which arm.
            "secret": secrets.token_hex(32),
            "allow_target_variant": plan.allow_target_variant,
        }
        return variants, extra

    def _smoke(self, plan: TrafficPlan, record: dict[str, Any]) -> None:
        """The challenger answers its example request as its version, before it is routed.

        On its own port, not through the router: a smoke request through the router would be
        captured as part of the experiment.
        """
        with http_client(30.0) as client:
            response = client.post(
                f"http://127.0.0.1:{record['port']}/invocations",
                json={"instances": plan.challenger.example_request},
            )
        answer = parse_answer(record["name"], response.status_code, response.content)
        if answer.get("version") != plan.challenger.version:
            raise RolloutFailed(
                "smoke-test", f"{record['name']} answered as version {answer.get('version')}"
            )

    def stop(self, model: str, progress: Progress) -> None:
        """Champion's variant back alone at 100 %; challenger drained and stopped; capture kept.

        A no-op when no experiment runs (a promotion's deploy already ended it).
        """
        with self.router.lock(f"model-{model}"):
            route = self.router.route(model)
            if not route or not (route.get("experiment") or route.get("shadow")):
                return
            arms = (route.get("experiment") or {}).get("arms", {})
            keep = [v for v in route["variants"] if arms.get(v["name"], "champion") == "champion"]
            keep = keep or route["variants"][:1]
            names = {v["name"] for v in keep}
            gone = [v for v in routed(route) if v["name"] not in names]
            variants = [{**v, "weight": 1.0} for v in keep]
            generation = self.router.write(model, variants, {"experiment": None, "shadow": None})
            self.router.confirm(model, generation, [v["name"] for v in variants])
            self.target._retire(model, gone, progress)
        experiment_id = (route.get("experiment") or {}).get("id")
        progress(f"{model}: experiment {experiment_id} stopped; the champion serves 100 %")

    def traffic(self, model: str) -> dict[str, Any] | None:
        """What the route does now; None when the model is not served."""
        route = self.router.route(model)
        if not route:
            return None
        experiment = route.get("experiment") or {}
        arms = experiment.get("arms", {})
        shadow = route.get("shadow")
        return {
            "mode": experiment.get("mode"),
            "experiment_id": experiment.get("id"),
            "variants": [
                {
                    "name": v["name"],
                    "version": v["version"],
                    "weight": v.get("weight", 1.0),
                    "arm": arms.get(v["name"], "champion"),
                }
                for v in route["variants"]
            ],
            "shadow": None
            if not shadow
            else {
                "name": shadow["name"],
                "version": shadow["version"],
                "percent": shadow["percent"],
            },
            "capture_prefix": (route.get("capture") or {}).get("uri"),
        }
