"""Redis store: several instances of the fake (behind a load balancer) share one Redis.

Every key lives under a prefix (default "kie-mock:"; `redis://host:port/db?prefix=name:`), and
`reset()` deletes the keys of the layout below by name: not another deployment's, even one whose
prefix extends ours ("kie-mock:teamb:"). How the atomicity promises of `base.Store` hold: each verb that
reads and then writes is one Lua script, which Redis runs without interleaving anything else.

Layout (P = prefix):
  P acct:credits / P acct:hmac / P acct:order   hashes key -> balance / HMAC key (JSON); zset for order
  P rate:<bucket>                               zset token -> admitted at (expires with its window)
  P task:<id>                                   hash field -> JSON value (update_task = HSET: atomic)
  P tasks / P tasks:exp                         zsets id -> sequence (newest first) / expires_at
  P job:<id>                                    hash: data (JSON), due, task, owner, lease_until
  P due                                         zset id -> when it is next claimable (due, or lease end)
  P taskjobs:<task id>                          set of the task's job ids
  P log:<journal>                               list, newest first, LTRIM'd to its limit
  P faults / P fault:<n>                        list of armed fault numbers (oldest first) / hash
  P settings                                    hash name -> JSON value
"""

from __future__ import annotations

import uuid
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import redis

from .base import Store

_dumps = orjson.dumps
_loads = orjson.loads


def _matches(entry: dict, match: dict) -> bool:
    return all(v is None or entry.get(k) == v for k, v in match.items())


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _num(value) -> float | None:
    return None if value is None or value == b"" else float(value)


# Lua pieces the scripts below share (each script is sent whole: Redis runs one script atomically).
_LUA_CHARGE = """
local function charge(k_credits, key, amount)
  local c = redis.call('HGET', k_credits, key)
  if not c then return false end
  amount = tonumber(amount)
  if tonumber(c) < amount then return false end
  return redis.call('HINCRBY', k_credits, key, 0 - amount)  -- not -amount: Lua's -0 is no integer to Redis
end
"""
_LUA_PUT_TASK = """
local function put_task(k_task, k_tasks, k_exp, k_seq, id, expires, first)
  redis.call('DEL', k_task)
  redis.call('HSET', k_task, unpack(ARGV, first))
  if not redis.call('ZSCORE', k_tasks, id) then
    redis.call('ZADD', k_tasks, redis.call('INCR', k_seq), id)
  end
  if expires ~= '' then redis.call('ZADD', k_exp, expires, id) else redis.call('ZREM', k_exp, id) end
end
"""
_LUA_ADD_JOB = """
-- k_taskjobs: the prefix of the per-task job sets ('<prefix>taskjobs:'), the task id follows
local function add_job(k_job, k_due, k_taskjobs, id, due, task_id, data)
  local was = redis.call('HGET', k_job, 'task')
  if was and was ~= task_id then  -- the id moves to another task: out of the old task's set
    redis.call('SREM', k_taskjobs .. was, id)
  end
  redis.call('DEL', k_job)
  redis.call('HSET', k_job, 'data', data, 'due', due, 'task', task_id)
  redis.call('ZADD', k_due, due, id)
  redis.call('SADD', k_taskjobs .. task_id, id)
end
"""

_CHARGE = _LUA_CHARGE + "return charge(KEYS[1], ARGV[1], ARGV[2])"

_REFUND = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return false end
return redis.call('HINCRBY', KEYS[1], ARGV[1], tonumber(ARGV[2]))
"""

# KEYS[1] rate zset; ARGV now, limit, window in ms (key expiry), token, cutoff (now - window).
# Scores are admission times. Numbers stay strings in Lua: its tostring keeps only 14 digits.
_RATE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[5])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, first[2]}
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, '0'}
"""

# The end of update_task and refund_task: the fields from ARGV[first] on, the expiry index, the task.
_LUA_UPDATE_FIELDS = """
local function update_fields(k_task, k_exp, id, expiry, first)
  if #ARGV >= first then redis.call('HSET', k_task, unpack(ARGV, first)) end
  if expiry == '' then redis.call('ZREM', k_exp, id)
  elseif expiry ~= '-' then redis.call('ZADD', k_exp, expiry, id) end
  return redis.call('HGETALL', k_task)
end
"""

# KEYS[1] task hash, KEYS[2] tasks:exp; ARGV id, expiry ('-' unchanged, '' none), field1, json1, ...
_UPDATE_TASK = _LUA_UPDATE_FIELDS + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return update_fields(KEYS[1], KEYS[2], ARGV[1], ARGV[2], 3)
"""

# update_task, and unless the task says "refunded": credits back to its key (if it has an account),
# and "refunded" set. KEYS[1] task hash, KEYS[2] tasks:exp, KEYS[3] credits hash;
# ARGV id, expiry (as update_task), amount, field1, json1, ...
_REFUND_TASK = _LUA_UPDATE_FIELDS + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HGET', KEYS[1], 'refunded') ~= 'true' then
  local key = redis.call('HGET', KEYS[1], 'key')
  if key then
    key = cjson.decode(key)
    if type(key) == 'string' and redis.call('HEXISTS', KEYS[3], key) == 1 then
      redis.call('HINCRBY', KEYS[3], key, tonumber(ARGV[3]))
    end
  end
  redis.call('HSET', KEYS[1], 'refunded', 'true')
end
return update_fields(KEYS[1], KEYS[2], ARGV[1], ARGV[2], 4)
"""

# KEYS[1] task hash, KEYS[2] tasks, KEYS[3] tasks:exp, KEYS[4] task sequence;
# ARGV id, expires_at ('' = none), field1, json1, ...
_PUT_TASK = _LUA_PUT_TASK + """
put_task(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], 3)
return 1
"""

# charge + put_task + add_job in one step. KEYS credits hash, task hash, tasks, tasks:exp, task
# sequence, job hash, due zset, the job sets' prefix; ARGV key, amount, job id, job due, job data,
# task id, expires_at ('' = none), field1, json1, ...
_ACCEPT = _LUA_CHARGE + _LUA_PUT_TASK + _LUA_ADD_JOB + """
local left = charge(KEYS[1], ARGV[1], ARGV[2])
if not left then return false end
put_task(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[6], ARGV[7], 8)
add_job(KEYS[6], KEYS[7], KEYS[8], ARGV[3], ARGV[4], ARGV[6], ARGV[5])
return left
"""

# ARGV prefix, before. Deletes the tasks whose expiry is <= before.
_PURGE = """
local p = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', p .. 'tasks:exp', '-inf', ARGV[2])
for _, id in ipairs(ids) do
  redis.call('DEL', p .. 'task:' .. id)
  redis.call('ZREM', p .. 'tasks', id)
  redis.call('ZREM', p .. 'tasks:exp', id)
end
return #ids
"""

# KEYS[1] job hash, KEYS[2] due zset, KEYS[3] the job sets' prefix; ARGV id, due, task id, data
_ADD_JOB = _LUA_ADD_JOB + """
add_job(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return 1
"""

# KEYS[1] due zset; ARGV prefix, now, owner, lease end, limit.
# Returns, per job: id, data, due, task id, lease end (as given).
_CLAIM = """
local p = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[5]))
local out = {}
for _, id in ipairs(ids) do
  local k = p .. 'job:' .. id
  local fields = redis.call('HMGET', k, 'data', 'due', 'task')
  if fields[1] then
    redis.call('HSET', k, 'owner', ARGV[3], 'lease_until', ARGV[4])
    redis.call('ZADD', KEYS[1], ARGV[4], id)
    table.insert(out, id); table.insert(out, fields[1]); table.insert(out, fields[2]); table.insert(out, fields[3])
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

# KEYS[1] due zset; ARGV prefix, job id
_FINISH = """
local k = ARGV[1] .. 'job:' .. ARGV[2]
local task = redis.call('HGET', k, 'task')
redis.call('DEL', k)
redis.call('ZREM', KEYS[1], ARGV[2])
if task then redis.call('SREM', ARGV[1] .. 'taskjobs:' .. task, ARGV[2]) end
return 1
"""

# KEYS[1] due zset, KEYS[2] the task's job set; ARGV prefix, due
_RESCHEDULE = """
local n = 0
local due = tonumber(ARGV[2])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local k = ARGV[1] .. 'job:' .. id
  local f = redis.call('HMGET', k, 'due', 'owner')
  if f[1] and not f[2] and tonumber(f[1]) > due then
    redis.call('HSET', k, 'due', ARGV[2])
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    n = n + 1
  end
end
return n
"""

_LOG = """
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
return 1
"""

# KEYS[1] credits, KEYS[2] HMAC keys, KEYS[3] settings, KEYS[4] fault list; ARGV prefix, key.
# What every API request reads first, in one round trip: {credits, hmac, settings as a flat
# list, the kinds of fault armed for the key or for everyone}, or {false} for an unknown key.
_PRELUDE = """
local c = redis.call('HGET', KEYS[1], ARGV[2])
if not c then return {false} end
local armed, seen = {}, {}
for _, n in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do
  local f = redis.call('HMGET', ARGV[1] .. 'fault:' .. n, 'kind', 'key')
  if f[1] and (f[2] == '*' or f[2] == ARGV[2]) and not seen[f[1]] then
    seen[f[1]] = true
    armed[#armed + 1] = f[1]
  end
end
return {c, redis.call('HGET', KEYS[2], ARGV[2]), redis.call('HGETALL', KEYS[3]), armed}
"""

# KEYS[1] fault list; ARGV prefix, key, kind. Returns {data, count left} or false.
_TAKE_FAULT = """
for _, n in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local k = ARGV[1] .. 'fault:' .. n
  local f = redis.call('HMGET', k, 'kind', 'key', 'data')
  if f[1] == ARGV[3] and (f[2] == '*' or f[2] == ARGV[2]) then
    local left = redis.call('HINCRBY', k, 'count', -1)
    if left <= 0 then
      redis.call('DEL', k)
      redis.call('LREM', KEYS[1], 1, n)
    end
    return {f[3], left}
  elseif not f[1] then
    redis.call('LREM', KEYS[1], 1, n)
  end
end
return false
"""

# KEYS[1] settings hash; ARGV name, value (a JSON number). The larger of the two stays.
_RAISE_SETTING = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (not current) or tonumber(current) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return ARGV[2]
end
return current
"""

_SCRIPTS = {name[1:].lower(): src for name, src in globals().copy().items()
            if name.startswith("_") and not name.startswith("_LUA_") and name.isupper() and isinstance(src, str)}


def _fault_key(fault: dict) -> str:
    key = fault.get("key", "*")
    return "\0" if key is None else key  # None matches no request key, as in the other stores


def split_url(url: str, prefix: str | None = None) -> tuple[str, str]:
    """A redis:// URL without our `prefix=` query parameter, and the prefix."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    found = [v for k, v in query if k == "prefix"]
    rest = [(k, v) for k, v in query if k != "prefix"]
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix or (found[-1] if found else "kie-mock:")


class RedisStore(Store):
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str | None = None, client=None):
        url, self.prefix = split_url(url, prefix)
        self.url = url
        # redis-py's pool is thread-safe and notices a fork (a child opens its own connections).
        self.r = client or redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=10,
                                                health_check_interval=30)
        p = self.prefix
        self.k_credits, self.k_hmac, self.k_acct_order = p + "acct:credits", p + "acct:hmac", p + "acct:order"
        self.k_tasks, self.k_tasks_exp, self.k_task_seq = p + "tasks", p + "tasks:exp", p + "tasks:seq"
        self.k_due, self.k_faults, self.k_fault_seq = p + "due", p + "faults", p + "faults:seq"
        self.k_settings = p + "settings"
        self._scripts = {name: self.r.register_script(src) for name, src in _SCRIPTS.items()}

    def _run(self, name: str, keys=(), args=()):
        return self._scripts[name](keys=list(keys), args=list(args))

    def close(self) -> None:
        try:
            self.r.close()
        except Exception:
            pass

    # What reset() deletes: the keys of the layout above, by name. Not every key that starts with
    # the prefix: another deployment's prefix may extend ours ("kie-mock:" and "kie-mock:teamb:").
    _FAMILIES = ("rate:", "task:", "job:", "taskjobs:", "log:", "fault:")
    _SINGLES = ("acct:credits", "acct:hmac", "acct:order", "tasks", "tasks:exp", "tasks:seq", "due", "faults",
                "faults:seq", "settings")

    def reset(self) -> None:
        batch = [self.prefix + name for name in self._SINGLES]
        for family in self._FAMILIES:
            for key in self.r.scan_iter(match=self._glob(self.prefix + family) + "*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    self.r.unlink(*batch)
                    batch = []
        if batch:
            self.r.unlink(*batch)

    @staticmethod
    def _glob(text: str) -> str:
        return "".join("\\" + c if c in "*?[]\\" else c for c in text)

    # -- accounts ------------------------------------------------------------------------------
    def put_account(self, key, credits, hmac_key=None):
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(self.k_credits, key, int(credits))
            pipe.hset(self.k_hmac, key, _dumps(hmac_key))
            pipe.zadd(self.k_acct_order, {key: 0}, nx=True)
            pipe.execute()

    def prelude(self, key):
        got = self._run("prelude", [self.k_credits, self.k_hmac, self.k_settings, self.k_faults], [self.prefix, key])
        if got[0] is None:
            return None, {}, frozenset()
        credits, hmac_key, flat, armed = got
        account = {"key": key, "credits": int(credits), "hmac_key": _loads(hmac_key) if hmac_key else None}
        settings = {_s(flat[i]): _loads(flat[i + 1]) for i in range(0, len(flat), 2)}
        return account, settings, frozenset(_s(k) for k in armed)

    def get_account(self, key):
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hget(self.k_credits, key)
            pipe.hget(self.k_hmac, key)
            credits, hmac_key = pipe.execute()
        if credits is None:
            return None
        return {"key": key, "credits": int(credits), "hmac_key": _loads(hmac_key) if hmac_key else None}

    def delete_account(self, key):
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hdel(self.k_credits, key)
            pipe.hdel(self.k_hmac, key)
            pipe.zrem(self.k_acct_order, key)
            return pipe.execute()[0] > 0

    def list_accounts(self):
        with self.r.pipeline(transaction=True) as pipe:
            pipe.zrange(self.k_acct_order, 0, -1)
            pipe.hgetall(self.k_credits)
            pipe.hgetall(self.k_hmac)
            order, credits, hmacs = pipe.execute()
        out = []
        for k in order:
            if k in credits:
                h = hmacs.get(k)
                out.append({"key": _s(k), "credits": int(credits[k]), "hmac_key": _loads(h) if h else None})
        return out

    def charge(self, key, amount):
        left = self._run("charge", [self.k_credits], [key, int(amount)])
        return None if left is None else int(left)

    def refund(self, key, amount):
        left = self._run("refund", [self.k_credits], [key, int(amount)])
        return None if left is None else int(left)

    # -- rate windows ---------------------------------------------------------------------------
    def rate_acquire(self, bucket, now, limit, window):
        token = uuid.uuid4().hex
        ok, first = self._run("rate", [self.prefix + "rate:" + bucket],
                              [repr(float(now)), int(limit), int(window * 1000) + 1000, token, repr(float(now - window))])
        if ok:
            return True, 0.0, token
        return False, max(float(first) + window - now, 0.0), ""

    def rate_release(self, bucket, token):
        self.r.zrem(self.prefix + "rate:" + bucket, token)

    # -- tasks ------------------------------------------------------------------------------------
    def _task_key(self, task_id: str) -> str:
        return self.prefix + "task:" + task_id

    @staticmethod
    def _task(fields) -> dict | None:
        if not fields:
            return None
        if isinstance(fields, dict):
            return {_s(k): _loads(v) for k, v in fields.items()}
        it = iter(fields)
        return {_s(k): _loads(v) for k, v in zip(it, it)}

    def put_task(self, task):
        args = [task["taskId"], "" if task.get("expires_at") is None else repr(float(task["expires_at"]))]
        for k, v in task.items():
            args += [k, _dumps(v)]
        self._run("put_task", [self._task_key(task["taskId"]), self.k_tasks, self.k_tasks_exp, self.k_task_seq],
                  args)

    def accept(self, key, cost, task, job):
        job = dict(job, owner=None, lease_until=None)
        task_id = task["taskId"]
        args = [key, int(cost), job["id"], repr(float(job["due"])), _dumps(job),
                task_id, "" if task.get("expires_at") is None else repr(float(task["expires_at"]))]
        for k, v in task.items():
            args += [k, _dumps(v)]
        left = self._run("accept", [self.k_credits, self._task_key(task_id), self.k_tasks, self.k_tasks_exp,
                                    self.k_task_seq, self._job_key(job["id"]), self.k_due,
                                    self.prefix + "taskjobs:"], args)
        return None if left is None else int(left)

    def get_task(self, task_id):
        return self._task(self.r.hgetall(self._task_key(task_id)))

    def update_task(self, task_id, changes):
        if not changes:
            return self.get_task(task_id)
        return self._task(self._run("update_task", [self._task_key(task_id), self.k_tasks_exp],
                                    self._update_args(task_id, changes)))

    @staticmethod
    def _update_args(task_id, changes, *extra) -> list:
        """ARGV of update_task and refund_task: id, expiry ('-' unchanged, '' none), extra, field1, json1, ..."""
        expiry = changes.get("expires_at", "-")
        args = [task_id, "-" if expiry == "-" else "" if expiry is None else repr(float(expiry)), *extra]
        for k, v in changes.items():
            args += [k, _dumps(v)]
        return args

    def refund_task(self, task_id, changes, amount):
        changes = {k: v for k, v in changes.items() if k != "refunded"}  # the script sets it, once
        return self._task(self._run("refund_task", [self._task_key(task_id), self.k_tasks_exp, self.k_credits],
                                    self._update_args(task_id, changes, int(amount))))

    def list_tasks(self, key=None, status=None, limit=100):
        out: list[dict] = []
        start, page = 0, max(int(limit), 1) if key is None and status is None else 500
        while len(out) < limit:
            ids = self.r.zrevrange(self.k_tasks, start, start + page - 1)
            if not ids:
                break
            start += page
            with self.r.pipeline(transaction=False) as pipe:
                for tid in ids:
                    pipe.hgetall(self._task_key(_s(tid)))
                for fields in pipe.execute():
                    task = self._task(fields)
                    if task and (key is None or task.get("key") == key) \
                            and (status is None or task.get("status") == status):
                        out.append(task)
                        if len(out) >= limit:
                            break
        return out

    def purge_tasks(self, before):
        return int(self._run("purge", [], [self.prefix, repr(float(before))]))

    # -- jobs -----------------------------------------------------------------------------------
    def _job_key(self, job_id: str) -> str:
        return self.prefix + "job:" + job_id

    def add_job(self, job):
        job = dict(job, owner=None, lease_until=None)
        task_id = job.get("task_id") or ""
        self._run("add_job", [self._job_key(job["id"]), self.k_due, self.prefix + "taskjobs:"],
                  [job["id"], repr(float(job["due"])), task_id, _dumps(job)])

    def claim_due(self, now, owner, lease, limit=100):
        until = now + lease
        flat = self._run("claim", [self.k_due], [self.prefix, repr(float(now)), owner, repr(float(until)), int(limit)])
        jobs = []
        for i in range(0, len(flat), 4):
            job = _loads(flat[i + 1])
            job.update(id=_s(flat[i]), due=float(flat[i + 2]), owner=owner, lease_until=until)
            jobs.append(job)
        jobs.sort(key=lambda j: j["due"])
        return jobs

    def finish_job(self, job_id):
        self._run("finish", [self.k_due], [self.prefix, job_id])

    def next_due(self):
        first = self.r.zrange(self.k_due, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def list_jobs(self, task_id=None):
        if task_id is None:
            ids = self.r.zrange(self.k_due, 0, -1)
        else:
            ids = self.r.smembers(self.prefix + "taskjobs:" + task_id)
        with self.r.pipeline(transaction=False) as pipe:
            for jid in ids:
                pipe.hgetall(self._job_key(_s(jid)))
            rows = pipe.execute()
        jobs = []
        for jid, h in zip(ids, rows):
            if not h:
                continue
            job = _loads(h[b"data"])
            job.update(id=_s(jid), due=float(h[b"due"]), owner=_s(h.get(b"owner")),
                       lease_until=_num(h.get(b"lease_until")))
            jobs.append(job)
        jobs.sort(key=lambda j: j["due"])
        return jobs

    def reschedule_jobs(self, task_id, due):
        return int(self._run("reschedule", [self.k_due, self.prefix + "taskjobs:" + task_id],
                             [self.prefix, repr(float(due))]))

    # -- journals --------------------------------------------------------------------------------
    def log(self, journal, entry, limit):
        self._run("log", [self.prefix + "log:" + journal], [_dumps(entry), int(limit)])

    def log_many(self, journal, entries, limit):
        if entries:
            key = self.prefix + "log:" + journal
            with self.r.pipeline(transaction=True) as pipe:
                pipe.lpush(key, *(_dumps(e) for e in entries))
                pipe.ltrim(key, 0, int(limit) - 1)
                pipe.execute()

    def read_log(self, journal, limit=100, **match):
        out = []
        key = self.prefix + "log:" + journal
        start, page = 0, 1000
        while len(out) < limit:
            raw = self.r.lrange(key, start, start + page - 1)
            if not raw:
                break
            start += page
            for data in raw:
                entry = _loads(data)
                if _matches(entry, match):
                    out.append(entry)
                    if len(out) >= limit:
                        break
        return out

    # -- faults -----------------------------------------------------------------------------------
    def arm_fault(self, fault):
        n = self.r.incr(self.k_fault_seq)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(self.prefix + f"fault:{n}", mapping={
                "kind": str(fault.get("kind")), "key": _fault_key(fault),
                "count": int(fault.get("count", 1)), "data": _dumps(fault)})
            pipe.rpush(self.k_faults, n)
            pipe.execute()

    def take_fault(self, key, kind):
        got = self._run("take_fault", [self.k_faults], [self.prefix, key, kind])
        if not got:
            return None
        fault = _loads(got[0])
        fault["count"] = int(got[1])
        return fault

    def list_faults(self):
        ns = self.r.lrange(self.k_faults, 0, -1)
        with self.r.pipeline(transaction=False) as pipe:
            for n in ns:
                pipe.hmget(self.prefix + "fault:" + _s(n), "data", "count")
            rows = pipe.execute()
        out = []
        for data, count in rows:
            if data is not None:
                fault = _loads(data)
                fault["count"] = int(count)
                out.append(fault)
        return out

    def clear_faults(self):
        ns = self.r.lrange(self.k_faults, 0, -1)
        with self.r.pipeline(transaction=True) as pipe:
            for n in ns:
                pipe.delete(self.prefix + "fault:" + _s(n))
            pipe.delete(self.k_faults)
            pipe.execute()

    # -- settings ----------------------------------------------------------------------------------
    def get_settings(self):
        return {_s(k): _loads(v) for k, v in self.r.hgetall(self.k_settings).items()}

    def claim_setting(self, name, value):
        return bool(self.r.hsetnx(self.k_settings, name, _dumps(value)))

    def raise_setting(self, name, value):
        return _loads(self._run("raise_setting", [self.k_settings], [name, _dumps(value)]))

    def update_settings(self, changes):
        with self.r.pipeline(transaction=True) as pipe:
            if changes:
                pipe.hset(self.k_settings, mapping={k: _dumps(v) for k, v in changes.items()})
            pipe.hgetall(self.k_settings)
            current = pipe.execute()[-1]
        return {_s(k): _loads(v) for k, v in current.items()}
