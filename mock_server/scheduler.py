"""Due work, in time order: stage transitions and callback deliveries, with retries and a journal.

Jobs live in the store (so they survive restarts and can be shared by workers) and are
claimed with a lease, so each is worked by one worker at a time. One thread per process
wakes when something is due and hands jobs to a small pool: no thread per task.

A process whose scheduler does not claim (`claims=False`: an HTTP worker of `kie-mock serve`
on a shared store, whose due work a scheduler process of its own does, see server.py) still
runs the rounds, for the work that rides on them (the request journal), and adds jobs.

Per task, the stages happen at their planned times whatever the receiver does (record-info
follows the plan, as generation does on the real service), and the callbacks go out in stage
order: a stage's callback is made once its stage has happened and the previous stage's callback
was delivered. While a receiver fails or is slow (retries), polling runs ahead of the callbacks;
after the last retry fails, no more callbacks (CALLBACK_EXCEPTION).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor

from . import lifecycle
from .config import Config
from .delivery import Attempt, HttpDelivery, signed_headers
from .netpolicy import BLOCKED, Policy, host_of
from .scenarios import Scenario
from .fastschema import checker
from .spec import validator
from .stores import OutageLog, unavailable

PURGE_EVERY = 60.0
OUTAGE_RETRY_MAX = 2.0  # seconds between the rounds of a scheduler whose store is down
STOP_WAIT = 12.0  # seconds a stopping scheduler waits for its jobs in progress (the supervisor allows 15)
FLOW = 2  # a job's "flow": stages on their own time, callbacks in order (jobs stored before 2026-11 have none)


URL_SHOWN = 2048  # characters of a callBackUrl an attempt keeps (the task keeps it whole)


def _shown(url: str) -> str:
    """A URL as the attempts journal keeps it: a 900 KB one made each /_mock/callbacks answer 100 MB."""
    return url if len(url) <= URL_SHOWN else f"{url[:URL_SHOWN]}…({len(url)} characters)"


class Scheduler:
    def __init__(self, store, clock, cfg: Config, deliver=None, owner: str | None = None,
                 poll_interval: float = 0.05, claims: bool = True):
        self.store, self.clock, self.cfg = store, clock, cfg
        self.claims = claims  # False: this process never works due jobs (another process does)
        self.deliver = deliver or HttpDelivery(cfg.callback_timeout, allow=cfg.outbound_allow)
        self.policy = Policy(cfg.outbound_allow)
        self.delivery_filters = deliver is None  # its HttpDelivery checks the addresses it connects to
        self.owner = owner or uuid.uuid4().hex[:12]
        self.lease = cfg.callback_timeout * 2 + 5
        self.poll_interval = poll_interval
        self._wake = threading.Event()
        self._outage = OutageLog("callbacks")
        self._local = threading.local()  # the job a pool thread works (process)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._last_purge = 0.0
        self._busy = 0  # jobs handed to the pool and not finished
        self._busy_lock = threading.Lock()
        self.each_round: list = []  # callables run on every round of the loop (journal flushes)
        if getattr(clock, "virtual", False):
            clock.listeners.append(self)

    # -- scheduling ---------------------------------------------------------------------
    @staticmethod
    def job(task_id: str, kind: str, due: float, **extra) -> dict:
        return {"id": lifecycle.new_id(), "task_id": task_id, "kind": kind, "due": due, **extra}

    def first_job(self, task: dict) -> dict:
        """The job of a newly accepted task's first stage (the store adds it with the task)."""
        return self.job(task["taskId"], "stage", task["plan"][0]["at"], index=0, flow=FLOW)

    def nudge(self) -> bool:
        """Ask for a round now (its journal flush included); False if no scheduler thread runs."""
        thread = self._thread
        if thread is None or not thread.is_alive() or self._stop.is_set():
            return False
        self._wake.set()
        return True

    def added(self, job: dict) -> None:
        """A job was added to the store: wake up if it is due before the next poll."""
        if job["due"] <= self.clock.now() + self.poll_interval:  # later work is found by the next poll anyway
            self._wake.set()

    def _add(self, task_id: str, kind: str, due: float, **extra) -> None:
        job = self.job(task_id, kind, due, **extra)
        self.store.add_job(job)
        self.added(job)

    def submit(self, task: dict) -> None:
        """Plan the first stage of a task already stored."""
        job = self.first_job(task)
        self.store.add_job(job)
        self.added(job)

    def fire_now(self, task_id: str) -> int:
        """Make the task's pending work due now: its stages still to come (the rest of its plan is
        moved to now), callback retries and late deliveries. On a virtual clock it all runs before
        this returns, without moving the clock (a receiver that keeps failing uses up its retries)."""
        now = self.clock.now()
        task = self.store.get_task(task_id)
        if task is not None and any(step["at"] > now for step in task["plan"]):
            self.store.update_task(task_id, {"plan": [dict(step, at=min(step["at"], now)) for step in task["plan"]]})
        n = self.store.reschedule_jobs(task_id, now)
        self._wake.set()
        if getattr(self.clock, "virtual", False):
            self.clock.advance(0)
            # running may add work for later (the next retry, a delayed delivery): fire it too;
            # bounded, since a task has a bounded number of stages and attempts
            for _ in range(100):
                more = self.store.reschedule_jobs(task_id, now)
                if not more:
                    break
                n += more
                self.clock.advance(0)
        return n

    # -- running --------------------------------------------------------------------------
    def next_due(self) -> float | None:
        return self.store.next_due()

    def run_due(self) -> int:
        """Work every due job in this thread, until none is due (virtual clock, tests)."""
        done = 0
        while True:
            jobs = self.store.claim_due(self.clock.now(), self.owner, self.lease)
            if not jobs:
                return done
            for job in jobs:
                self.process(job)
                done += 1

    def start(self) -> None:
        if self._thread or getattr(self.clock, "virtual", False):
            return
        self._stop.clear()  # a scheduler stopped before may start again
        self._pool = ThreadPoolExecutor(self.cfg.delivery_workers, thread_name_prefix="kie-mock-callback")
        self._thread = threading.Thread(target=self._loop, name="kie-mock-scheduler", daemon=True)
        self._thread.start()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        if self in getattr(self.clock, "listeners", ()):
            self.clock.listeners.remove(self)
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None
            # The jobs in progress are finished, not left claimed: after a clean stop no callback
            # waits out a lease (35 s by default) to be made again by the next process.
            deadline = time.monotonic() + min(self.cfg.callback_timeout + 1.0, STOP_WAIT)
            while self._busy and time.monotonic() < deadline:
                time.sleep(0.01)
            for work in self.each_round:  # a last round of the buffered work (the journal)
                try:
                    work()
                except Exception:
                    traceback.print_exc()
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=False)
            self._pool = None

    def _loop(self) -> None:
        failures = 0  # rounds in a row that the store failed
        while not self._stop.is_set():
            now = self.clock.now()
            try:
                # Claim only what the pool can start now: a claimed job waiting in a queue could
                # outlive its lease and be claimed again by another worker (two attempts).
                room = self.cfg.delivery_workers - self._busy if self.claims else 0
                for job in self.store.claim_due(now, self.owner, self.lease, limit=room) if room > 0 else ():
                    with self._busy_lock:
                        self._busy += 1
                    self._pool.submit(self._run_pooled, job)
                for work in self.each_round:
                    work()
                if self.claims and now - self._last_purge > PURGE_EVERY:
                    self._last_purge = now
                    self.store.purge_tasks(now)
                nxt = self.store.next_due() if self.claims else None
                if failures:
                    failures = 0
                    self._outage.recovered()
            except Exception as exc:  # a store hiccup must not kill the scheduler
                if self._said(exc):  # a bug is said each time, with no reason to wait longer
                    failures += 1
                nxt = None
            full = self._busy >= self.cfg.delivery_workers  # then a finishing job wakes us
            wait = self.poll_interval if nxt is None or full else min(max(nxt - self.clock.now(), 0),
                                                                      self.poll_interval)
            if failures:  # the store is down: try again less and less often, up to every 2 s
                wait = min(self.poll_interval * 2 ** min(failures, 10), OUTAGE_RETRY_MAX)
            if wait > 0:
                self._wake.wait(wait)
            self._wake.clear()

    def _run_pooled(self, job: dict) -> None:
        try:
            self.process(job)
        finally:
            with self._busy_lock:
                self._busy -= 1
            self._wake.set()  # room for another job

    # -- one job ------------------------------------------------------------------------------
    def process(self, job: dict) -> None:
        """Work one claimed job, then delete it. A store that fails meanwhile (`stores.unavailable`:
        down, or its lock held past the wait) leaves the job claimed: it is taken again when its
        lease runs out, and what it had done is not done twice (a stage) or is at least once (a
        callback). Deleting it then lost the task's later stages and callbacks."""
        keep = False
        self._local.job, self._local.lost = job, False
        try:
            task = self.store.get_task(job["task_id"])
            if task is not None:
                if job["kind"] == "stage":
                    self._stage(task, job)
                elif job.get("flow") == FLOW:
                    self._delivery(task, job["stage"], job["attempt"], job["index"])
                else:  # stored by an older kie-mock
                    self._delivery(task, job["stage"], job["attempt"], job["index"], job.get("chain", True))
        except Exception as exc:  # journal it; never lose the scheduler thread
            keep = self._said(exc, f" (job {job['id']} of task {job['task_id']} is taken again when its lease "
                                   f"runs out)")
            if not keep:
                self._try(self.store.log, "attempts", {"task_id": job["task_id"], "stage": job.get("stage"),
                                                       "error": f"internal: {exc!r}", "at": self.clock.now()},
                          self.cfg.journal_limit)
        else:
            if self._outage.active:  # the store worked for this job
                self._outage.recovered()
        finally:
            keep = keep or self._local.lost  # a job taken by another is that one's to finish
            self._local.job = None
            if not keep:
                self._try(self.store.finish_job, job["id"])

    def _said(self, exc: Exception, then: str = "") -> bool:
        """Say what went wrong: an unavailable store in the outage log (True), a bug's traceback."""
        reason = unavailable(exc)
        if reason is None:
            traceback.print_exception(exc)
            return False
        self._outage.failed(reason + then)
        return True

    def _try(self, fn, *args) -> None:
        """A store call whose failure is said, not raised (the job stays claimed if it was finish_job)."""
        try:
            fn(*args)
        except Exception as exc:
            self._said(exc)

    def _still_mine(self, task_id: str) -> bool:
        """The job this thread works is still claimed by this scheduler, its lease not run out. A
        process paused past its lease (SIGSTOP, a long GC, a stalled VM) finds its job taken by
        another, which makes the same callback again and goes on from there: going on here too
        made every later callback twice, out of order."""
        job = getattr(self._local, "job", None)
        if job is None:
            return True
        now = self.clock.now()
        mine = any(j["id"] == job["id"] and j.get("owner") == self.owner and (j.get("lease_until") or 0) > now
                   for j in self.store.list_jobs(task_id))
        if not mine:
            self._local.lost = True
        return mine

    def _next_stage(self, task: dict, index: int, flow: int | None) -> None:
        if index + 1 < len(task["plan"]):
            step = task["plan"][index + 1]
            extra = {"flow": flow} if flow else {}
            self._add(task["taskId"], "stage", max(step["at"], self.clock.now()), index=index + 1, **extra)

    def _stage(self, task: dict, job: dict) -> None:
        index = job["index"]
        step = task["plan"][index]
        now = self.clock.now()
        changes = lifecycle.apply_stage(task, step["stage"], step.get("code"), step.get("status"))
        if "completed_at" in changes:
            changes["completed_at"] = now
        refunds = step.get("code") in lifecycle.REFUNDING_CODES
        if job.get("flow") != FLOW:  # stored by an older kie-mock: the next stage waits for this callback
            self._legacy_stage(self._apply(task, changes, refunds), index, now)
            return
        if task.get("stage_index", -1) >= index:
            self._rerun(task, index)
            return
        changes["stage_index"] = index
        # One atomic update each, this one and the previous callback's "delivered_through": whichever
        # comes second sees both, and makes this stage's callback (exactly one of them does).
        task = self._apply(task, changes, refunds)
        if task["delivery"] == "abandoned":  # given up while this stage was being applied (its status
            task = self._abandoned_status(task)  # was read before): polling says so
        self._next_stage(task, index, flow=FLOW)
        if task.get("delivered_through", -1) >= index - 1:
            self._callback(task, index, inline=True)

    def _apply(self, task: dict, changes: dict, refunds: bool) -> dict:
        """The stage's changes to the task, stored; with its credits given back (once) for a
        refunding failure, in the same atomic step."""
        if refunds:
            return self.store.refund_task(task["taskId"], changes, task.get("charged", 0))
        return self.store.update_task(task["taskId"], changes)

    def _abandoned_status(self, task: dict) -> dict:
        """A task whose callbacks were given up, its status as that says (lifecycle.status_when_abandoned),
        written if the stored one (read after another write) is not it."""
        status = lifecycle.status_when_abandoned(task)
        if task["status"] == status:
            return task
        return self.store.update_task(task["taskId"], {"status": status})

    def _rerun(self, task: dict, index: int) -> None:
        """A stage job run again after the process that ran it died (its lease ran out): the
        stage happened already and is not applied again (polling went backwards, and the stages
        after it were planned twice); what may not have happened after it is done: planning the
        next stage, and this stage's callback (at least once)."""
        if task["stage_index"] == index and index + 1 < len(task["plan"]) and not any(
                j["kind"] == "stage" and j.get("index") == index + 1 for j in self.store.list_jobs(task["taskId"])):
            self._next_stage(task, index, flow=FLOW)
        if task.get("delivered_through", -1) == index - 1:
            self._callback(task, index, inline=True)
        elif task.get("delivered_through", -1) == index and task["stage_index"] > index and not any(
                j.get("index") == index + 1 for j in self.store.list_jobs(task["taskId"])):
            # this stage's callback was delivered and recorded, and the process died before it
            # planned the next one (whose stage had happened meanwhile, and whose own job is done:
            # while that job is there, it makes the callback, or its next run does): plan it now
            self._callback(task, index + 1, inline=False)

    def _callback(self, task: dict, index: int, inline: bool) -> None:
        """Make the callback of stage `index` (whose stage has happened, and whose predecessor's
        callback was delivered): in this job (`inline`: the stage job's own callback), or in a job
        of its own, now or when a delayed-callbacks task wants it. A job makes one callback (and
        its duplicate) at most: its lease is sized for that."""
        scenario = Scenario.from_dict(task["scenario"])
        if not scenario.sends_callbacks or task["delivery"] == "abandoned":
            return
        now = self.clock.now()
        step = task["plan"][index]
        due = step["at"] + self.cfg.delay(scenario.callback_delay) if scenario.callback_delay else now
        if inline and due <= now:
            self._delivery(task, step["stage"], 0, index)
        else:  # chain=False: an older kie-mock sharing the store plans no second stage from it
            self._add(task["taskId"], "deliver", max(due, now), stage=step["stage"], attempt=0, index=index,
                      flow=FLOW, chain=False)

    def _delivered(self, task: dict, index: int) -> None:
        """Stage `index`'s callback was delivered: the next one, if its stage has happened. (The
        last one is recorded too: the control API shows the task's callbacks as delivered.) Not
        if this job is no longer ours: its new owner makes this callback again and goes on."""
        if not self._still_mine(task["taskId"]):
            return
        task = self.store.update_task(task["taskId"], {"delivered_through": index})
        if task is not None and index + 1 < len(task["plan"]) and task.get("stage_index", -1) >= index + 1:
            self._callback(task, index + 1, inline=False)

    def _legacy_stage(self, task: dict, index: int, now: float) -> None:
        """A stage job stored by an older kie-mock: the next stage is planned once this stage's
        callback is delivered or given up (`chain`)."""
        scenario = Scenario.from_dict(task["scenario"])
        if not scenario.sends_callbacks or task["delivery"] == "abandoned":
            self._next_stage(task, index, flow=None)
        elif scenario.callback_delay:
            self._add(task["taskId"], "deliver", now + self.cfg.delay(scenario.callback_delay),
                      stage=task["plan"][index]["stage"], attempt=0, chain=False, index=index)
            self._next_stage(task, index, flow=None)
        else:
            self._delivery(task, task["plan"][index]["stage"], 0, index, chain=True)

    def _send(self, task: dict, stage: str, attempt: int, duplicate: bool = False) -> Attempt | None:
        """One POST of the stage's callback, journaled; None when the task was gone by its end (a
        reset, or its expiry, while it was being sent): not journaled then, and nothing follows."""
        account = self.store.get_account(task["key"]) or {}
        now = self.clock.now()
        headers = signed_headers(account.get("hmac_key"), task["taskId"], now)
        data, refusal = self._payload(task, stage)
        if refusal is not None:  # the fake's bug: never sent, and the task goes on as after a failed attempt
            print(f"kie-mock: {refusal}", file=sys.stderr, flush=True)
            result = Attempt(None, f"internal: {refusal}", 0.0)
        elif self._may_call(task["callBackUrl"]):
            result = self.deliver(task["callBackUrl"], data, headers)
        else:
            result = Attempt(None, BLOCKED.format(what="callBackUrl"), 0.0)
        if self.store.get_task(task["taskId"]) is None:
            return None
        self.store.log("attempts", {
            "task_id": task["taskId"], "stage": stage, "attempt": attempt, "url": _shown(task["callBackUrl"]),
            "at": now, "wall_time": time.time(), "status": result.status, "error": result.error,
            "duration": round(result.duration, 4), "ok": result.ok, "duplicate": duplicate,
            "signed": bool(headers),
        }, self.cfg.journal_limit)
        return result

    def _may_call(self, url: str) -> bool:
        """The allowlist, as far as it is decided here: a name is checked where the fake's own
        delivery connects (its allowed addresses only); an injected delivery gets it resolved here."""
        if self.delivery_filters:
            return self.policy.verdict(host_of(url)) is not False
        return self.policy.allows(url)

    @staticmethod
    def _payload(task: dict, stage: str) -> tuple[bytes | None, str | None]:
        """The callback's body as sent, or why the fake must not send it (a body the contract
        forbids, or one that is not JSON: Infinity, NaN)."""
        body = lifecycle.callback_body(task, stage)
        if not checker("callback.json")(body):
            errors = sorted(validator("callback.json").iter_errors(body), key=str)
            return None, (f"{stage} callback for {task['taskId']} breaks schemas/callback.json: "
                          f"{errors[0].message if errors else 'the compiled check refused it'}")
        try:
            return json.dumps(body, allow_nan=False).encode(), None
        except ValueError as exc:
            return None, f"{stage} callback for {task['taskId']} is not JSON: {exc}"

    def _delivery(self, task: dict, stage: str, attempt: int, index: int, chain: bool | None = None) -> None:
        """One attempt at a stage's callback; then the next callback, or a retry, or no more.
        `chain` is for delivery jobs stored by an older kie-mock (None for the others): True, plan
        the next stage once this callback is delivered or given up."""
        if task["delivery"] == "abandoned":
            return
        result = self._send(task, stage, attempt)
        if result is None:
            return
        if result.ok:
            if Scenario.from_dict(task["scenario"]).duplicates:
                self._send(task, stage, attempt, duplicate=True)
            if chain is None:
                self._delivered(task, index)
            elif chain:
                self._next_stage(task, index, flow=None)
        elif attempt < len(self.cfg.retry_delays):
            due = self.clock.now() + self.cfg.delay(self.cfg.retry_delays[attempt])
            how = {"flow": FLOW, "chain": False} if chain is None else {"chain": chain}
            self._add(task["taskId"], "deliver", due, stage=stage, attempt=attempt + 1, index=index, **how)
        else:  # "If 3 consecutive retries fail, the system will stop sending callbacks."
            task = self.store.update_task(task["taskId"], {"status": lifecycle.status_when_abandoned(task),
                                                           "delivery": "abandoned"})
            if task is not None:  # a failing stage applied between the read and this write: its status stands
                task = self._abandoned_status(task)
            if chain:
                self._next_stage(task, index, flow=None)
