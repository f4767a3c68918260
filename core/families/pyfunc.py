"""MLflow's loader-module hook for every family: the family's own ``load`` and ``predict``.

:func:`core.families.pyfunc_model` logs a model directory (what :meth:`Family.save` wrote) with
this module as its loader, so the model that ``mlflow.pyfunc.load_model`` or
``mlflow models serve`` runs is the serving app's: the family is read from ``family.json``,
loaded with :meth:`Family.load`, and answers with :meth:`Family.predict`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from core.families import Family, get_family

INDEX_FILE = "family.json"


class FamilyModel:
    """What MLflow's pyfunc loader gets back: one family's model and its ``predict``."""

    def __init__(self, family: Family, model: Any) -> None:
        """Wrap ``model``, loaded by ``family``."""
        self.family = family
        self.model = model

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """:meth:`Family.predict` on the request rows (MLflow has checked them on the schema)."""
        return self.family.predict(self.model, pd.DataFrame(model_input))


def _load_pyfunc(data_path: str) -> FamilyModel:
    """MLflow's loader-module hook: the family named in ``family.json`` loads the directory."""
    directory = Path(data_path)
    family = get_family(str(json.loads((directory / INDEX_FILE).read_text())["family"]))
    return FamilyModel(family, family.load(directory))
