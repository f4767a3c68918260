"""The pytest warning filters in pyproject.toml: our deprecations fail a test, others' do not.

``warnings.warn_explicit`` attributes a warning to a module by name, exactly as a
``warnings.warn`` call inside that module would be (stacklevel 1), without adding a
deprecated helper to the product code.
"""

from __future__ import annotations

import warnings

import pytest


def _warn_from(module: str, category: type[Warning]) -> None:
    warnings.warn_explicit(
        "old API", category, filename=f"{module.replace('.', '/')}.py", lineno=1, module=module
    )


@pytest.mark.parametrize("category", [DeprecationWarning, PendingDeprecationWarning])
@pytest.mark.parametrize("module", ["core", "core.gate", "adapters.store", "serving.app", "cli"])
def test_a_deprecation_from_our_code_fails_the_test(module: str, category: type[Warning]) -> None:
    # The configured filter turns it into an exception; a plain filter would only record it.
    with pytest.raises(category, match="old API"):
        _warn_from(module, category)


@pytest.mark.parametrize(
    "module",
    # Third-party code, and names that merely start like one of our packages.
    ["pandas.core.frame", "prefect.flows", "corelib", "tasks_extra.x", "mlflow.tasks"],
)
def test_a_deprecation_from_elsewhere_stays_quiet(module: str) -> None:
    with warnings.catch_warnings(record=True) as seen:
        # Recording keeps the configured filters: only a filter that lets it through records it.
        _warn_from(module, DeprecationWarning)
    assert seen == []


def test_other_warnings_from_our_code_are_untouched() -> None:
    # Only deprecations are errors: a UserWarning is shown, not raised.
    with warnings.catch_warnings(record=True) as seen:
        _warn_from("core.gate", UserWarning)
    assert [str(w.message) for w in seen] == ["old API"]
