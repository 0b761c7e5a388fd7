"""Scenario files: the control API's settings, accounts and faults from a YAML/JSON file
given at start (`kie-mock serve --scenario-file failures.yaml`), so a team can check a
failure setup into their repository.

    settings:            # any of PATCH /_mock/settings
      rate_limit: 5
      latency: {min: 0.2, max: 1.5}
      default_scenario: duplicate-callbacks
    accounts:            # PUT /_mock/accounts/<key>
      team-key: {credits: 30, webhookHmacKey: s3cret}
    faults:              # POST /_mock/faults, in order
      - {code: 402, count: 2, key: team-key}
      - {scenario: fail-501, count: 1}
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import yaml

from .admin import BadRequest, arm, put_account, update_settings

SECTIONS = ("settings", "accounts", "faults")
# Kept in the store's settings (not one the control API shows or takes): the fingerprint of
# the scenario file last applied to this store. A restart, or a second instance on a shared
# store, finds it there and leaves the state alone; a reset forgets it.
APPLIED = "_scenario_file"


def load(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
        # a .json file is read as strict JSON (YAML would let a trailing comma pass); anything else as YAML
        data = json.loads(text) if path.suffix.lower() == ".json" and text.strip() else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise BadRequest(f"scenario file {path}: {exc}") from None
    except RecursionError:
        raise BadRequest(f"scenario file {path}: nested too deep") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) - set(SECTIONS):
        raise BadRequest(f"scenario file {path}: a mapping with only {', '.join(SECTIONS)}")
    return data


def fingerprint(data: dict) -> str:
    def keyed(node):  # YAML keys may be numbers and strings in one mapping, which sort_keys cannot order
        if isinstance(node, dict):
            return {str(k): keyed(v) for k, v in node.items()}
        if isinstance(node, list):
            return [keyed(v) for v in node]
        return node
    return hashlib.sha256(json.dumps(keyed(data), sort_keys=True, default=str).encode()).hexdigest()[:32]


def apply(svc, data: dict) -> bool:
    """Apply the file's content to a store that has none applied (after a reset, or a loss), if
    this process is the one that claims it (APPLIED): of a reset and a worker starting meanwhile,
    one applies it. True if this one did."""
    if not svc.store.claim_setting(APPLIED, fingerprint(data)):
        return False
    _apply(svc, data)
    return True


def _apply(svc, data: dict) -> None:
    accounts = data.get("accounts") or {}
    faults = data.get("faults") or []
    if not isinstance(accounts, dict) or not isinstance(faults, list):
        raise BadRequest("scenario file: accounts is a mapping of key -> {credits, webhookHmacKey}; faults a list")
    for key, account in accounts.items():
        put_account(svc, str(key), account or {})
    update_settings(svc, data.get("settings") or {})
    for fault in faults:
        if not isinstance(fault, dict):
            raise BadRequest(f"scenario file: each fault is a mapping, got {fault!r}")
        arm(svc, fault)


def apply_file(svc, path: str | Path, *, remember_only: bool = False) -> None:
    """Apply the file to the service's store (unless `remember_only`: another process did),
    and remember it, so that POST /_mock/reset comes back to the same start state.

    A store that has this same content applied already (since its last reset) is left as it is:
    restarting the fake on its SQLite file, or starting a second instance on a shared Redis, keeps
    the balances, settings and faults the team has come to, instead of winding them back. A file
    whose content changed is applied."""
    try:
        data = load(path)
        fp = fingerprint(data)
        stored = svc.store.get_settings().get(APPLIED)
        if stored == fp:
            if not remember_only:
                print(f"kie-mock: scenario file {path}: already applied to this store, whose state is kept "
                      f"(POST /_mock/reset applies it again)", file=sys.stderr, flush=True)
        elif stored is None:  # a fresh store, or one wiped by a reset (its process may have died in
            apply(svc, data)  # it): of the processes starting on it and the reset, one applies the file
        elif not remember_only:  # the file changed
            svc.store.update_settings({APPLIED: fp})
            _apply(svc, data)
    except BadRequest as exc:
        raise SystemExit(f"kie-mock: {exc}") from None
    svc.startup = data
