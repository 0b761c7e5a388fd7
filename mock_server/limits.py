"""The per-model limit table (schemas/model-limits.json), loaded once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from .paths import MODEL_LIMITS


@dataclass(frozen=True)
class ModelLimits:
    name: str
    style: int
    title: int
    prompt: int
    model_name: str  # what callbacks report as model_name, e.g. "chirp-v3-5"
    max_minutes: int


@dataclass(frozen=True)
class LimitTable:
    non_custom_prompt: int
    models: dict[str, ModelLimits]

    @property
    def model_names(self) -> list[str]:
        return list(self.models)


@lru_cache(maxsize=1)
def table() -> LimitTable:
    raw = json.loads(MODEL_LIMITS.read_text())
    models = {
        name: ModelLimits(name, m["style"], m["title"], m["prompt"], m["modelName"], m["maxMinutes"])
        for name, m in raw["models"].items()
    }
    return LimitTable(raw["nonCustomPromptMaxLength"], models)
