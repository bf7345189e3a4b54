"""Per-tenant and per-address rate limits: token buckets shared by every API process through Redis.

A bucket holds up to ``burst`` tokens and refills at ``per_minute / 60`` tokens a second; a request takes one token
and is refused while the bucket is empty, with the whole seconds until a token is back. The Redis limiter updates a
bucket in one Lua script with Redis's own clock, so API processes on several machines share each limit exactly.
The embedded default (no Redis) uses an in-process limiter with the same interface.

When Redis cannot be reached the Redis limiter lets requests through and logs a warning: a limiter outage must not
turn into an API outage.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import redis

from orchestrator.errors import MediaAnalysisError

log = logging.getLogger(__name__)

KEY_PREFIX = "mam:ratelimit:"
# At most one "Redis unreachable" warning per this many seconds, so an outage does not flood the log.
OUTAGE_WARNING_EVERY_S = 60.0
REDIS_TIMEOUT_S = 0.5
MAX_MEMORY_BUCKETS = 100_000


@dataclass(frozen=True)
class Rule:
    """A bucket of ``burst`` tokens refilled at ``per_minute`` tokens a minute."""

    per_minute: float
    burst: int

    @property
    def refill_per_s(self) -> float:
        """Tokens added each second."""
        return self.per_minute / 60.0

    @property
    def enabled(self) -> bool:
        """A rule with no rate or no burst limits nothing."""
        return self.per_minute > 0 and self.burst > 0


@dataclass(frozen=True)
class Decision:
    """The outcome of taking from a bucket: allowed or not, and the whole seconds until a token is back."""

    allowed: bool
    retry_after_s: int
    remaining: int


class RateLimitedError(MediaAnalysisError):
    """Too many requests for this tenant or address; try again after ``retry_after_s`` seconds."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimiter(Protocol):
    """Token buckets by key. ``cost=0`` only asks whether a token is there; ``reset`` refills a bucket."""

    def take(self, key: str, rule: Rule, *, cost: int = 1) -> Decision:
        """Take ``cost`` tokens from the bucket ``key`` when at least ``max(cost, 1)`` are there."""
        ...

    def reset(self, key: str) -> None:
        """Forget the bucket ``key`` (it starts full again)."""
        ...


def _retry_after_s(missing_tokens: float, rule: Rule) -> int:
    return max(1, math.ceil(missing_tokens / rule.refill_per_s))


class MemoryRateLimiter:
    """Token buckets in this process (the embedded default, which runs one API process)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, rule: Rule, *, cost: int = 1) -> Decision:
        """See :class:`RateLimiter`."""
        if not rule.enabled:
            return Decision(allowed=True, retry_after_s=0, remaining=0)
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(rule.burst), now))
            tokens = min(float(rule.burst), tokens + max(0.0, now - at) * rule.refill_per_s)
            need = max(cost, 1)
            allowed = tokens >= need
            if allowed:
                tokens -= cost
            if len(self._buckets) >= MAX_MEMORY_BUCKETS and key not in self._buckets:
                self._buckets.clear()  # a flood of one-off keys (addresses); losing their state only lets them in
            self._buckets[key] = (tokens, now)
        retry = 0 if allowed else _retry_after_s(need - tokens, rule)
        return Decision(allowed=allowed, retry_after_s=retry, remaining=int(tokens))

    def reset(self, key: str) -> None:
        """See :class:`RateLimiter`."""
        with self._lock:
            self._buckets.pop(key, None)


# KEYS[1] the bucket; ARGV burst, refill per second, cost. Returns {allowed 0|1, tokens left, seconds to wait} with
# the floats as strings (Lua numbers come back to Redis clients truncated to integers).
BUCKET_SCRIPT_LUA = """
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local need = math.max(cost, 1)
local allowed = 0
if tokens >= need then
  allowed = 1
  tokens = tokens - cost
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
local wait = 0
if allowed == 0 then wait = (need - tokens) / rate end
return {allowed, tostring(tokens), tostring(wait)}
"""


class RedisRateLimiter:
    """Token buckets in Redis, shared by every API process that uses the same Redis database."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        self._script = self._client.register_script(BUCKET_SCRIPT_LUA)
        self._last_warning = -OUTAGE_WARNING_EVERY_S

    def take(self, key: str, rule: Rule, *, cost: int = 1) -> Decision:
        """See :class:`RateLimiter`; lets the request through when Redis cannot be reached."""
        if not rule.enabled:
            return Decision(allowed=True, retry_after_s=0, remaining=0)
        try:
            allowed, tokens, wait = self._script(keys=[KEY_PREFIX + key], args=[rule.burst, rule.refill_per_s, cost])
        except redis.RedisError as exc:
            self._warn(exc)
            return Decision(allowed=True, retry_after_s=0, remaining=0)
        if int(allowed):
            return Decision(allowed=True, retry_after_s=0, remaining=int(float(tokens)))
        return Decision(allowed=False, retry_after_s=max(1, math.ceil(float(wait))), remaining=int(float(tokens)))

    def reset(self, key: str) -> None:
        """See :class:`RateLimiter`."""
        try:
            self._client.delete(KEY_PREFIX + key)
        except redis.RedisError as exc:
            self._warn(exc)

    def _warn(self, exc: redis.RedisError) -> None:
        now = time.monotonic()
        if now - self._last_warning >= OUTAGE_WARNING_EVERY_S:
            self._last_warning = now
            log.warning("rate limits are off: Redis cannot be reached (%s)", type(exc).__name__)


def limiter_for(url: str) -> RateLimiter:
    """A Redis limiter when ``url`` is a Redis URL (production), else an in-process one (the embedded default)."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisRateLimiter(url)
    return MemoryRateLimiter()
