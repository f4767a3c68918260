"""Arms are drawn, not chosen: a caller can neither name its arm during an experiment (unless
the model allows it, and then the request is marked and left out) nor compute a sticky key
that lands on the arm it wants from what the router publishes.

The integration test (``tests/integration/test_arm_choice.py``) tries the same against a real
router; these run the routing function, the capture record, its reader and the join in process.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from scipy.stats import binom

from adapters.capture import HOSTILE_RECORD, read_line
from core.observations import CHOSEN_ARM, observe
from serving.capture import Captured, capture_line
from serving.experiment_routing import (
    NO_EXPERIMENT,
    CaptureRoute,
    ExperimentRoute,
    parse_experiment,
    pick,
)
from serving.routes import Upstream
from tests.fixtures.experiments import FAMILY, record
from tests.unit.test_observations import KEYS, labels, row

CHAMPION = Upstream("champ", "m", "v1", 1001, weight=90.0)
CHALLENGER = Upstream("chall", "m", "v2", 1002, weight=10.0)
VARIANTS = (CHAMPION, CHALLENGER)
ARMS = {"champ": "champion", "chall": "challenger"}
EXPERIMENT = ExperimentRoute("exp-1", ARMS, secret="s3cr3t" * 8)


def inside(n: int, share: float, count: int) -> bool:
    """Whether ``count`` of ``n`` draws at ``share`` is where random draws land (1e-6 tails)."""
    low, high = binom.interval(1 - 1e-6, n, share)
    return bool(low <= count <= high)


def published_point(key: str, experiment_id: str) -> float:
    """Where a key fell before: sha256 of the published experiment id and the key."""
    digest = hashlib.sha256(f"{experiment_id}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def keys_for_the_challenger(experiment_id: str, n: int) -> list[str]:
    """What an adversarial caller computes from ``GET /endpoints/{model}``: keys that land on
    the challenger (the top 10 % of the weights) by the published experiment id."""
    found = []
    for i in range(100 * n):
        if published_point(f"k{i}", experiment_id) >= 0.9:
            found.append(f"k{i}")
            if len(found) == n:
                return found
    raise AssertionError("no keys found")


def test_a_named_variant_is_drawn_during_an_experiment_by_default() -> None:
    rng = random.Random(7)
    picks = [pick(VARIANTS, set(), EXPERIMENT, "chall", rng=rng) for _ in range(2000)]
    assert not any(chosen for _, chosen in picks)
    landed = Counter(v.name for v, _ in picks if v is not None)
    assert inside(2000, 0.10, landed["chall"]), landed
    # An unknown name is ignored too (no 400 that would confirm which names exist).
    assert pick(VARIANTS, set(), EXPERIMENT, "nope", rng=rng)[0] in VARIANTS


def test_a_named_variant_answers_and_is_marked_chosen_when_the_experiment_allows_it() -> None:
    allowing = ExperimentRoute("exp-1", ARMS, secret="x", allow_target_variant=True)
    assert pick(VARIANTS, set(), allowing, "chall") == (CHALLENGER, True)
    assert pick(VARIANTS, set(), allowing, "nope") == (None, False)


def test_outside_an_experiment_a_named_variant_answers_and_nothing_is_at_stake() -> None:
    assert pick(VARIANTS, set(), NO_EXPERIMENT, "chall") == (CHALLENGER, False)
    assert pick(VARIANTS, set(), NO_EXPERIMENT, "nope") == (None, False)


def test_keys_searched_with_the_published_experiment_id_land_where_random_callers_do() -> None:
    keys = keys_for_the_challenger("exp-1", 300)
    landed = Counter(pick(VARIANTS, set(), EXPERIMENT, caller_key=k)[0].name for k in keys)  # type: ignore[union-attr]
    assert inside(300, 0.10, landed["chall"]), landed
    # Still sticky: the same key, the same arm.
    again = Counter(pick(VARIANTS, set(), EXPERIMENT, caller_key=k)[0].name for k in keys)  # type: ignore[union-attr]
    assert again == landed


def test_an_experiment_without_a_secret_draws_keyed_callers_at_random() -> None:
    """A route written before experiments had secrets: a key would be computable, so it is
    ignored rather than trusted."""
    bare = ExperimentRoute("exp-1", ARMS)
    keys = keys_for_the_challenger("exp-1", 300)
    rng = random.Random(3)
    landed = Counter(pick(VARIANTS, set(), bare, caller_key=k, rng=rng)[0].name for k in keys)  # type: ignore[union-attr]
    assert inside(300, 0.10, landed["chall"]), landed


def test_the_route_table_carries_the_secret_and_the_setting_and_never_shows_the_secret() -> None:
    raw = {
        "id": "e",
        "arms": {"champ": "champion"},
        "secret": "abc123",
        "allow_target_variant": True,
    }
    parsed = parse_experiment("models.m", {"experiment": raw}, {"champ"})
    assert parsed.secret == "abc123" and parsed.allow_target_variant is True
    assert "abc123" not in repr(parsed)
    default = parse_experiment("models.m", {"experiment": {"id": "e"}}, set())
    assert default.allow_target_variant is False
    with pytest.raises(ValueError, match="allow_target_variant"):
        parse_experiment("models.m", {"experiment": {"id": "e", "allow_target_variant": 1}}, set())


def test_the_local_route_of_an_experiment_gets_a_new_secret_and_the_setting_off() -> None:
    from types import SimpleNamespace

    from adapters.endpoints.local.experiment import LocalExperiments
    from tests.unit.test_traffic_plan import PLAN

    experiments = LocalExperiments.__new__(LocalExperiments)
    experiments.target = SimpleNamespace(capture_prefix=lambda m: f"/c/{m}", kms_key_id=None)  # type: ignore[assignment]
    champion = {"name": "champ", "version": "v1", "port": 1}
    challenger = {"name": "chall", "version": "v2", "port": 2}
    first = experiments._route(PLAN, [champion], challenger)[1]["experiment"]
    second = experiments._route(PLAN, [champion], challenger)[1]["experiment"]
    assert first["allow_target_variant"] is False
    assert len(first["secret"]) == 64 and first["secret"] != second["secret"]


def captured_line(chosen: bool) -> str:
    item = Captured(
        CaptureRoute("unused", "ep"), "chall", "v2", "challenger", "exp-1", "id-1",
        "application/json", json.dumps({"instances": [{"client_id": "c1"}]}).encode(),
        b'{"predictions": [{"y": 1.0}]}', "application/json", 0.0, chosen=chosen,
    )  # fmt: skip
    return json.dumps(capture_line(item))


def test_a_chosen_answer_is_captured_and_read_as_chosen() -> None:
    chosen, drawn = (json.loads(captured_line(c)) for c in (True, False))
    assert chosen["eventMetadata"]["customAttributes"].endswith(";chosen=1")
    assert "chosen" not in drawn["eventMetadata"]["customAttributes"]
    assert read_line(captured_line(True), "exp-1").rows[0]["chosen"] is True
    assert read_line(captured_line(False), "exp-1").rows[0]["chosen"] is False


def test_a_request_key_named_chosen_cannot_pass_for_the_routers_mark(tmp_path: Path) -> None:
    item = Captured(
        CaptureRoute("unused", "ep"), "chall", "v2", "challenger", "exp-1", "id-1",
        "application/json", b'{"instances": [{"client_id": "c1", "chosen": false}]}',
        b'{"predictions": [{"y": 1.0}]}', "application/json", 0.0, chosen=True,
    )  # fmt: skip
    read = read_line(json.dumps(capture_line(item)), "exp-1")
    assert read.rows == [] and read.skipped == {HOSTILE_RECORD: 1}


def test_chosen_requests_are_left_out_of_the_decision_and_counted() -> None:
    drawn = [row("champion", "c1", 100.0, 5, "i1"), row("challenger", "c2", 200.0, 5, "i2")]
    steered = [row("challenger", f"c{i}", 110.0, 1, f"s{i}", chosen=True) for i in range(3, 8)]
    captured = pd.DataFrame([{**r, "chosen": False} for r in drawn] + steered)
    truth = labels(c1=110.0, c2=190.0, **{f"c{i}": 110.0 for i in range(3, 8)})
    obs = observe(record(mode="ab"), captured, truth, FAMILY, KEYS)
    alone = observe(record(mode="ab"), pd.DataFrame(drawn), truth, FAMILY, KEYS)
    assert obs.requests == alone.requests == {"champion": 1, "challenger": 1}
    assert obs.labelled == alone.labelled
    assert {m: [list(a) for a in v] for m, v in obs.values.items()} == {
        m: [list(a) for a in v] for m, v in alone.values.items()
    }
    assert obs.skipped == {CHOSEN_ARM: 5}


def test_the_setting_is_off_by_default_and_strict() -> None:
    from pydantic import ValidationError

    from core.experiment import ExperimentPolicy

    assert ExperimentPolicy().allow_target_variant is False
    assert ExperimentPolicy(allow_target_variant=True).allow_target_variant is True
    with pytest.raises(ValidationError):
        ExperimentPolicy(allow_target_variant="yes")  # type: ignore[arg-type]


def test_the_route_table_holding_the_secret_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    from serving.routes import write_state

    state = tmp_path / "routes.json"
    experiment = {"id": "e", "arms": {"champ": "champion"}, "secret": "ab" * 32}
    route = {"variants": [{"name": "champ", "version": "v1", "port": 1}], "experiment": experiment}
    write_state(state, {"generation": 1, "models": {"m": route}})
    assert state.stat().st_mode & 0o777 == 0o600
