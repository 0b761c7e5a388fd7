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
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import Config

FAIL_CODES = (400, 408, 413, 500, 501, 531)
CREATE_FAILED = {"code": 500, "status": "CREATE_TASK_FAILED"}  # fail-create's error stage
NAMES = ("success", "complete-only", *(f"fail-{c}" for c in FAIL_CODES), "fail-create", "duplicate-callbacks",
         "delayed-callbacks", "no-callbacks", "empty-files", "empty-urls")
# The parameters a scenario takes (seconds); the others take none.
PARAMS = {"delayed-callbacks": ("delay",), "empty-files": ("seconds",), "empty-urls": ("seconds",)}


@dataclass(frozen=True)
class Scenario:
    name: str = "success"
    params: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, params: dict | None = None) -> "Scenario":
        """A scenario by name; ValueError with the list of names when unknown."""
        if name is not None and not isinstance(name, str):
            raise ValueError(f"scenario: a name is required (got {name!r}); known: {', '.join(NAMES)}")
        name = (name or "success").strip()
        if name not in NAMES:
            raise ValueError(f"unknown scenario {name!r}; known: {', '.join(NAMES)}")
        if params is not None and not isinstance(params, dict):
            raise ValueError(f"scenario {name}: params is a mapping, e.g. {{\"delay\": 5}} (got {params!r})")
        params = dict(params or {})
        allowed = PARAMS.get(name, ())
        unknown = sorted(str(k) for k in set(params) - set(allowed))
        if unknown:  # a misspelt parameter would otherwise be ignored without a word
            takes = f"takes only {', '.join(allowed)}" if allowed else "takes no parameters"
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

    @property
    def fail_code(self) -> int | None:
        return int(self.name[5:]) if self.name.startswith("fail-") and self.name[5:].isdigit() else None

    @property
    def sends_callbacks(self) -> bool:
        return self.name != "no-callbacks"

    @property
    def duplicates(self) -> bool:
        return self.name == "duplicate-callbacks"

    @property
    def callback_delay(self) -> float:
        return float(self.params.get("delay", 30)) if self.name == "delayed-callbacks" else 0.0

    @property
    def empty_files_for(self) -> float:
        return float(self.params.get("seconds", 30)) if self.name == "empty-files" else 0.0

    @property
    def empty_urls_for(self) -> float:
        return float(self.params.get("seconds", 30)) if self.name == "empty-urls" else 0.0

    def plan(self, now: float, cfg: Config) -> list[dict]:
        """[{"stage", "at", "code"?}] in order; times on the fake's clock."""
        t_text, t_first, t_complete = (now + cfg.delay(d) for d in cfg.stage_delays)
        if self.name == "complete-only":
            return [{"stage": "complete", "at": t_complete}]
        if self.name == "fail-create":
            return [{"stage": "error", "at": t_text, **CREATE_FAILED}]
        if self.fail_code is not None:
            return [{"stage": "text", "at": t_text},
                    {"stage": "error", "at": t_first, "code": self.fail_code}]
        return [{"stage": "text", "at": t_text}, {"stage": "first", "at": t_first},
                {"stage": "complete", "at": t_complete}]
