"""The endpoint contract's one shared rule: what counts as an answer to a smoke test."""

from __future__ import annotations

import pytest

from core.endpoint import RolloutFailed, parse_answer


def test_a_json_object_with_a_2xx_status_is_the_answer() -> None:
    assert parse_answer("m", 200, b'{"predictions": [1]}') == {"predictions": [1]}


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (500, b"boom", "m answered HTTP 500: boom"),
        (200, b"<html>", "m answered a body that is not JSON: b'<html>'"),
        (200, b"[1, 2]", "m answered list, not an object"),
    ],
)
def test_anything_else_fails_the_smoke_test_saying_why(
    status: int, body: bytes, reason: str
) -> None:
    with pytest.raises(RolloutFailed) as info:
        parse_answer("m", status, body)
    assert info.value.step == "smoke-test"
    assert info.value.reason == reason
