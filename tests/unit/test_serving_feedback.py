"""The router's feedback settings and memory of answered ids (the route itself runs against
the real router in ``tests/integration/test_feedback.py``)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serving.feedback import AnsweredIds, FeedbackSettings


def test_a_token_too_short_is_refused_without_being_quoted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLOPS_ROUTER_FEEDBACK_TOKEN", "s3cr3t-pw")
    with pytest.raises(ValidationError) as caught:
        FeedbackSettings()
    assert "token" in str(caught.value)
    assert "s3cr3t-pw" not in str(caught.value)


def test_the_token_is_never_shown_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_ROUTER_FEEDBACK_TOKEN", "a-long-enough-secret-token")
    settings = FeedbackSettings()
    assert "a-long-enough-secret-token" not in repr(settings) + str(settings.model_dump())


def test_feedback_is_off_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLOPS_ROUTER_FEEDBACK_TOKEN", raising=False)
    assert FeedbackSettings().token is None


def test_the_router_forgets_the_oldest_answered_ids_past_its_limit() -> None:
    answered = AnsweredIds(limit=2)
    for inference_id in ("a", "b", "c"):
        answered.add("m", inference_id)
    assert ("m", "a") not in answered
    assert ("m", "b") in answered and ("m", "c") in answered
    assert ("other", "c") not in answered  # an id is known per model
