"""Named task scenarios: how a task unfolds after it is accepted.

A scenario fixes the plan of stages (which stages, when) and how callbacks behave.
Names (also listed by GET /_mock/scenarios):

  success              text -> first -> complete (the default)
  complete-only        `complete` comes directly; text and first are skipped
  fail-CODE            text, then an error callback with CODE (400 408 413 500 501 531);
                       record-info shows the matching status and errorCode/errorMessage;
                       531 refunds the credits
  fail-create          the task is never created: no text stage, an error callback (500,
                       "Internal Error") at the text stage's time; record-info CREATE_TASK_FAILED
  duplicate-callbacks  every callback is delivered twice
  delayed-callbacks    statuses advance on time, each callback arrives `delay` s late (default 30)
  no-callbacks         statuses advance, no callback is ever sent
  empty-files          after SUCCESS the files serve 0 bytes for `seconds` (default 30)
  empty-urls           after SUCCESS record-info's audioUrl and sourceAudioUrl are "" for
                       `seconds` (default 30); the complete callback has them

The first six say which stages happen (the plan); the others change how callbacks and files
behave, and combine with a plan and with each other, joined by "+":
`fail-531+duplicate-callbacks`, `delayed-callbacks+empty-files`. A combination names one plan at
most (none: success); no-callbacks leaves nothing for duplicate- or delayed-callbacks to act on,
and a failing plan has no files or URLs for empty-files or empty-urls: both are refused. The
name is kept in one order (the plan first, then the others as listed above), so one combination
has one name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from .config import Config

FAIL_CODES = (400, 408, 413, 500, 501, 531)
CREATE_FAILED = {"code": 500, "status": "CREATE_TASK_FAILED"}  # fail-create's error stage
PLANS = ("success", "complete-only", *(f"fail-{c}" for c in FAIL_CODES), "fail-create")
MODIFIERS = ("duplicate-callbacks", "delayed-callbacks", "no-callbacks", "empty-files", "empty-urls")
NAMES = (*PLANS, *MODIFIERS)
JOIN = "+"
# Combinations refused: the part would have nothing to act on (its partner, why).
NOTHING_TO_ACT_ON = {
    "duplicate-callbacks": ("no-callbacks", "no-callbacks sends no callback to duplicate"),
    "delayed-callbacks": ("no-callbacks", "no-callbacks sends no callback to delay"),
}
NEEDS_SUCCESS = ("empty-files", "empty-urls")  # act after SUCCESS, which a failing plan never reaches
# The parameters a scenario takes (seconds); the others take none.
PARAMS = {"delayed-callbacks": ("delay",), "empty-files": ("seconds",), "empty-urls": ("seconds",)}


@dataclass(frozen=True)
class Scenario:
    name: str = "success"
    params: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, params: dict | None = None) -> "Scenario":
        """A scenario by name, or a combination of names joined by "+"; ValueError with the
        list of names when one is unknown, or when the combination cannot be played."""
        if name is not None and not isinstance(name, str):
            raise ValueError(f"scenario: a name is required (got {name!r}); known: {', '.join(NAMES)}")
        name = canonical(name or "success")
        if params is not None and not isinstance(params, dict):
            raise ValueError(f"scenario {name}: params is a mapping, e.g. {{\"delay\": 5}} (got {params!r})")
        params = dict(params or {})
        allowed = [k for part in name.split(JOIN) for k in PARAMS.get(part, ())]
        unknown = sorted(str(k) for k in set(params) - set(allowed))
        if unknown:  # a misspelt parameter would otherwise be ignored without a word
            takes = f"takes only {', '.join(dict.fromkeys(allowed))}" if allowed else "takes no parameters"
            raise ValueError(f"scenario {name} {takes} (got {', '.join(unknown)})")
        for k in allowed:
            if k in params:
                value = params[k]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 86400 * 30:
                    raise ValueError(f"scenario {name}: {k} must be a number of seconds from 0 to 2592000")
        return cls(name, params)

    @classmethod
    def from_dict(cls, d: dict) -> "Scenario":
        return cls(d["name"], d.get("params") or {})

    def to_dict(self) -> dict:
        return {"name": self.name, "params": dict(self.params)}

    @cached_property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.name.split(JOIN))

    @property
    def plan_name(self) -> str:
        return self.parts[0] if self.parts[0] in PLANS else "success"

    @property
    def fail_code(self) -> int | None:
        plan = self.plan_name
        return int(plan[5:]) if plan.startswith("fail-") and plan[5:].isdigit() else None

    @property
    def sends_callbacks(self) -> bool:
        return "no-callbacks" not in self.parts

    @property
    def duplicates(self) -> bool:
        return "duplicate-callbacks" in self.parts

    @property
    def callback_delay(self) -> float:
        return float(self.params.get("delay", 30)) if "delayed-callbacks" in self.parts else 0.0

    @property
    def empty_files_for(self) -> float:
        return float(self.params.get("seconds", 30)) if "empty-files" in self.parts else 0.0

    @property
    def empty_urls_for(self) -> float:
        return float(self.params.get("seconds", 30)) if "empty-urls" in self.parts else 0.0

    def plan(self, now: float, cfg: Config) -> list[dict]:
        """[{"stage", "at", "code"?}] in order; times on the fake's clock."""
        t_text, t_first, t_complete = (now + cfg.delay(d) for d in cfg.stage_delays)
        plan = self.plan_name
        if plan == "complete-only":
            return [{"stage": "complete", "at": t_complete}]
        if plan == "fail-create":
            return [{"stage": "error", "at": t_text, **CREATE_FAILED}]
        if self.fail_code is not None:
            return [{"stage": "text", "at": t_text},
                    {"stage": "error", "at": t_first, "code": self.fail_code}]
        return [{"stage": "text", "at": t_text}, {"stage": "first", "at": t_first},
                {"stage": "complete", "at": t_complete}]


def canonical(name: str) -> str:
    """The one name of a scenario or combination ("duplicate-callbacks+fail-531" ->
    "fail-531+duplicate-callbacks"); ValueError when a part is unknown or the parts cannot
    be played together."""
    parts = [p.strip() for p in name.strip().split(JOIN)]
    for part in parts:
        if part not in NAMES:
            raise ValueError(f"unknown scenario {part!r}; known: {', '.join(NAMES)} "
                             f"(combine them with {JOIN}, e.g. fail-531{JOIN}duplicate-callbacks)")
    chosen = set(parts)
    if len(chosen) < len(parts):
        raise ValueError(f"scenario {name!r} names a part twice")
    plans = [p for p in PLANS if p in chosen]
    if len(plans) > 1:
        raise ValueError(f"scenario {name!r} names {' and '.join(plans)}: a task follows one plan "
                         f"({', '.join(PLANS)}), combined with any of {', '.join(MODIFIERS)}")
    for part, (other, why) in NOTHING_TO_ACT_ON.items():
        if part in chosen and other in chosen:
            raise ValueError(f"scenario {name!r} cannot be played: {why}")
    failing = [p for p in plans if p.startswith("fail-")]
    for part in NEEDS_SUCCESS:
        if part in chosen and failing:
            raise ValueError(f"scenario {name!r} cannot be played: {failing[0]} never reaches SUCCESS, "
                             f"after which {part} acts")
    if plans == ["success"] and len(chosen) > 1:
        chosen.discard("success")
    return JOIN.join(n for n in NAMES if n in chosen)
