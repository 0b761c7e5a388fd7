"""The fake service's verbs, independent of HTTP: authenticate, draft_cover and settle_cover (a
new cover, around its store write), record_info, credit. State lives in the store; time comes
from the clock; later work from the scheduler.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from . import faults, lifecycle
from .clock import make_clock
from .config import Config
from .journal import RequestJournal
from .rules import Rejection, check_upload_cover
from .scenarios import Scenario
from .scheduler import Scheduler
from .stores import API_OUTAGE, MemoryStore, Store, open_store

# The shared virtual clock's time, in the store's settings (not one the control API shows or takes)
CLOCK_NOW = "_clock_now"
SEEDED = "_seeded"  # the configured keys were put in this store (a store without it lost its state)


class WouldWait(Exception):
    """Raised (with `nowait`) where a verb would wait for the store's write lock, before it changed
    anything: an event loop runs the request again in a thread."""


@dataclass(frozen=True)
class Accepted:
    task_id: str


@dataclass(slots=True)
class RequestView:
    """What an API request reads of the store before its own rules (`Store.prelude`)."""
    account: dict
    settings: dict
    armed: frozenset  # fault kinds armed for the key or for everyone: only those are worth taking


@dataclass(slots=True)
class CoverDraft:
    """A cover that passed every check, not stored yet (see `Service.draft_cover`)."""
    key: str
    cost: int
    task: dict
    job: dict
    token: str | None  # its slot in the rate window, given back if the store refuses it
    fault: dict | None  # the armed scenario it used, given back likewise

    def accept_args(self) -> tuple:
        return self.key, self.cost, self.task, self.job


class Service:
    def __init__(self, cfg: Config, store: Store | None = None, clock=None, deliver=None,
                 source_checker=None, claims: bool = True):
        self.cfg = cfg
        self.store = store or open_store(cfg.store)
        self.clock = clock or make_clock(cfg.clock)
        self.scheduler = Scheduler(self.store, self.clock, cfg, deliver=deliver,
                                   poll_interval=0.05 if cfg.store == "memory" else 0.02, claims=claims)
        self.source_checker = source_checker
        self.journal = RequestJournal(self.store, cfg.journal_limit,  # received API requests
                                      hand_off=self.scheduler.nudge)
        self.scheduler.each_round.append(self.journal.flush)
        self.startup: dict | None = None  # the scenario file's content, re-applied by reset()
        self.after_reset: list = []  # callables run once reset() is done (a server's heap.settle)
        self._scenario_cache: tuple | None = None
        self._shared_clock = not isinstance(self.store, MemoryStore)  # another process may move it
        self.join_clock()
        self.seed_accounts()
        self.store.update_settings({SEEDED: True})

    # -- a virtual clock shared through the store -----------------------------------------------
    def join_clock(self) -> None:
        """A virtual clock takes the time of the instances already on the store (kept in its
        settings, under CLOCK_NOW), or puts its own there for those that come after."""
        if self.clock.virtual and not self.store.claim_setting(CLOCK_NOW, self.clock.now()):
            stored = self.store.get_settings().get(CLOCK_NOW)
            if stored is not None:
                self.clock.adopt(stored)

    def share_clock(self) -> None:
        """After this instance moved its virtual clock: every other one catches up on its next
        request (the prelude reads the settings) or control call (`sync_clock`). The store keeps
        the latest time of all (two advances at once never take it back), and this clock takes it."""
        if self.clock.virtual:
            self.clock.observe(self.store.raise_setting(CLOCK_NOW, self.clock.now()))

    def sync_clock(self) -> None:
        """Catch up with the shared virtual clock before a control call or a file answered."""
        if self.clock.virtual and self._shared_clock:
            self.observe_clock(self.store.get_settings())

    def observe_clock(self, settings: dict) -> None:
        """Catch up with the shared virtual time in stored settings just read (another process
        may have advanced it)."""
        if self.clock.virtual and CLOCK_NOW in settings:
            self.clock.observe(settings[CLOCK_NOW])

    def seed_accounts(self) -> None:
        """Create the configured keys that the store does not know yet (a restart keeps balances)."""
        for key, credits in self.cfg.api_keys.items():
            if self.store.get_account(key) is None:
                self.store.put_account(key, credits, self.cfg.webhook_hmac_keys.get(key))

    def _seed(self) -> None:
        """What a start puts in an empty store: the virtual time, the configured keys, the
        scenario file. Made by the one process that claimed SEEDED (after a reset, or a loss)."""
        self.share_clock()  # the clock is not moved back: the instances keep agreeing on it
        self.seed_accounts()
        if self.startup:
            from .scenario_file import apply

            apply(self, self.startup)

    def _lost_state(self, key: str) -> bool:
        """A configured key the store does not know, in a store that is no longer marked as seeded:
        it lost everything behind the fake's back (a Redis restarted without persistence, or
        flushed). Seed it again, as a start would. True when this process did (a key deleted
        through the control API leaves the mark, and stays unknown; of several requests at once,
        or a reset going on, one claims the mark and seeds)."""
        accounts = (self.startup or {}).get("accounts") or {}
        if (key not in self.cfg.api_keys and key not in map(str, accounts)) or SEEDED in self.store.get_settings() \
                or not self.store.claim_setting(SEEDED, True):
            return False
        print("kie-mock: the store has lost its state (a Redis restarted empty, or flushed?): the configured "
              "keys are seeded again", file=sys.stderr, flush=True)
        self._seed()
        return True

    def reset(self) -> None:
        """Back to the start state: configured keys, and the scenario file given at start."""
        self.journal.clear()
        self.store.reset()
        if self.store.claim_setting(SEEDED, True):  # else a request in between found the store empty, and seeds it
            self._seed()
        for then in self.after_reset:
            then()

    # -- settings that may change at run time (shared through the store) -----------------------
    def settings(self) -> dict:
        return self._settings(self.store.get_settings())

    def _settings(self, s: dict) -> dict:
        """The stored settings over the configured defaults."""
        return {
            "rate_limit": s.get("rate_limit", self.cfg.rate_limit),
            "rate_window": s.get("rate_window", self.cfg.rate_window),
            "cover_cost": s.get("cover_cost", self.cfg.cover_cost),
            "record_info_per_second": s.get("record_info_per_second", self.cfg.record_info_per_second),
            "maintenance": s.get("maintenance", False),
            "maintenance_window": s.get("maintenance_window"),
            "latency": s.get("latency"),
            "default_scenario": s.get("default_scenario", "success"),
        }

    # -- verbs ---------------------------------------------------------------------------------------
    def authenticate(self, authorization: str | None) -> tuple[str | None, RequestView | None, Rejection | None]:
        """(key, what the request reads of the store, None) or (None, None, why it is refused).
        The view (the key's account, the settings, the armed fault kinds) is one store read."""
        if not authorization:
            return None, None, Rejection(401, "You do not have access permissions: missing Authorization header "
                                              "(expected 'Authorization: Bearer <API key>')", "Authorization", "auth")
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return None, None, Rejection(401, "You do not have access permissions: malformed Authorization header "
                                              "(expected 'Bearer <API key>')", "Authorization", "auth")
        account, settings, armed = self.store.prelude(key)
        if API_OUTAGE.active:  # the store answered
            API_OUTAGE.recovered()
        if account is None and self._lost_state(key):
            account, settings, armed = self.store.prelude(key)
        self.observe_clock(settings)
        if account is None:
            return None, None, Rejection(401, "You do not have access permissions: unknown API key",
                                         "Authorization", "auth")
        return key, RequestView(account, self._settings(settings), armed), None

    def gate(self, key: str, prefer: faults.Prefer, settings: dict, armed: frozenset | None = None,
             path: str | None = None) -> Rejection | None:
        """What stops any authenticated request to `path` before its own rules: maintenance, forced
        codes (a code armed for this endpoint before one armed for every endpoint).
        `armed`: the fault kinds armed for the key when the request's prelude looked (None: unknown)."""
        if faults.maintenance_on(settings, self.clock.now()):
            return Rejection(455, faults.MESSAGES[455], None, "maintenance")
        code, msg, transport = prefer.code, None, prefer.transport
        if code is None:
            fault = None
            for kind in (faults.code_kind(path), faults.code_kind()) if path else (faults.code_kind(),):
                if armed is None or kind in armed:
                    fault = self.store.take_fault(key, kind)
                    if fault:
                        break
            fault = fault or {}
            code, msg, transport = fault.get("code"), fault.get("msg"), fault.get("transport")
        if code is not None:  # a forced 429 looks like a real one: Retry-After included
            return Rejection(code, msg or faults.MESSAGES[code], None, "forced",
                             retry_after=1 if code == 429 else None, transport=transport)
        return None

    def _rate_acquire(self, bucket: str, now: float, limit: int, window: float, nowait: bool):
        if not nowait:
            return self.store.rate_acquire(bucket, now, limit, window)
        got = self.store.try_rate_acquire(bucket, now, limit, window)
        if got is None:
            raise WouldWait(bucket)
        return got

    def draft_cover(self, key: str, body, base_url: str, prefer: faults.Prefer, settings: dict | None = None,
                    armed: frozenset | None = None, nowait: bool = False,
                    text: bytes | None = None) -> CoverDraft | Rejection:
        """Every check of a new cover, and the task it makes, short of storing it: the caller hands
        `draft.accept_args()` to `store.accept` (alone, or batched with others) and its answer to
        `settle_cover`. `armed`: the fault kinds the request's prelude saw armed (None: unknown).
        `nowait`: WouldWait instead of waiting for the write lock to take a rate-window slot.
        `text`: the body as sent (its numbers as written), when there is one."""
        settings = settings or self.settings()
        now = self.clock.now()
        limit = settings["rate_limit"]
        token = None
        if limit:
            ok, retry_after, token = self._rate_acquire("cover:" + key, now, limit, settings["rate_window"], nowait)
            if not ok:
                return Rejection(429, f"Rate limited: at most {limit} new tasks per {settings['rate_window']:g} s "
                                      f"per account; retry after {retry_after:.1f} s", None, "rate",
                                 retry_after=max(1, math.ceil(retry_after)))
        fault = None
        try:
            verdict = check_upload_cover(body, text) or self._check_source(body)
            if verdict is not None:
                if token:
                    self.store.rate_release("cover:" + key, token)
                return verdict
            scenario = prefer.scenario
            if scenario is None:
                if armed is None or "scenario" in armed:
                    fault = self.store.take_fault(key, "scenario")
                scenario = Scenario.parse(fault["scenario"], fault.get("params")) if fault \
                    else self._default_scenario(settings["default_scenario"])
            cost = settings["cover_cost"]
            task = lifecycle.new_task(body, key, now, self.cfg, self.cfg.public_url or base_url, scenario, cost)
            return CoverDraft(key, cost, task, self.scheduler.first_job(task), token, fault)
        except BaseException:  # a bug of the fake (a 500): what the draft took is given back
            self.abandon_cover(CoverDraft(key, 0, None, None, token, fault))
            raise

    def _default_scenario(self, name: str) -> Scenario:
        """The parsed default scenario (asked for by every cover; settings change it rarely)."""
        cached = self._scenario_cache
        if cached is None or cached[0] != name:
            cached = self._scenario_cache = (name, Scenario.parse(name))
        return cached[1]

    def settle_cover(self, draft: CoverDraft, balance: int | None) -> Accepted | Rejection:
        """After `store.accept` answered for the draft: the new balance, or None when it charged nothing."""
        if balance is not None:
            self.scheduler.added(draft.job)
            return Accepted(draft.task["taskId"])
        self.abandon_cover(draft)
        held = (self.store.get_account(draft.key) or {}).get("credits", 0)
        return Rejection(402, f"Insufficient credits: a cover costs {draft.cost} credits, "
                              f"the balance is {held}", None, "credits")

    def abandon_cover(self, draft: CoverDraft) -> None:
        """Nothing of the draft was stored (`store.accept` refused it with 402, or raised): give
        back its rate slot and the armed scenario it used (that is for the next task actually
        created)."""
        if draft.fault:
            self.store.arm_fault(dict(draft.fault, count=1))
        if draft.token:
            self.store.rate_release("cover:" + draft.key, draft.token)

    def _check_source(self, body: dict) -> Rejection | None:
        if not self.cfg.source_check or self.source_checker is None:
            return None
        return self.source_checker(body["uploadUrl"])

    def live_task(self, task_id: str) -> dict | None:
        """The task, or None when unknown or past its retention (files and records expire)."""
        task = self.store.get_task(task_id) if task_id else None
        if task is None or task["expires_at"] <= self.clock.now():
            return None
        return task

    def record_info(self, key: str, task_id: str | None, settings: dict | None = None,
                    nowait: bool = False) -> dict | Rejection:
        if not task_id:
            return Rejection(422, "Please enter taskId (query parameter)", "taskId", "required")
        task = self.live_task(task_id)
        if task is None or task["key"] != key:  # another account's task is as unknown as none
            return Rejection(422, "recordInfo is null", "taskId", "unknown")
        per_second = (settings or self.settings())["record_info_per_second"]
        if per_second:
            ok, retry_after, _ = self._rate_acquire("poll:" + task_id, self.clock.now(), per_second, 1.0, nowait)
            if not ok:
                return Rejection(429, f"Rate limited: at most {per_second} record-info queries per second "
                                      f"per task; retry after {retry_after:.1f} s", "taskId", "rate",
                                 retry_after=max(1, math.ceil(retry_after)))
        return lifecycle.record_info(task, self.clock.now())

    def credit(self, key: str) -> int:
        return (self.store.get_account(key) or {}).get("credits", 0)
