"""Who may read or write which tenant: API keys bound to tenants and rights.

A key table maps each key (stored only as its SHA-256 hash) to a name, the tenants it covers and its rights
(`read`, `write`, `admin`). The tenant of a request comes from its key, never from the caller alone:

- a key with one tenant need not name it; a key with several reads `public` unless it names one;
- naming a tenant the key does not cover is the same 404 as an unknown tenant (nobody learns which exist);
- writes name their tenant explicitly, and only `admin` writes `public`, which every request reads;
- `COUNCIL_API_KEY` alone still works: an admin key over every tenant, for one-user setups.

The table is a YAML (or JSON) file named by `COUNCIL_KEYS_FILE`:

    keys:
      - name: acme-app
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        tenants: [acme]
        rights: [read, write]
        requests_per_minute: 120      # optional, else http.rate_limits
        tokens_per_minute: 20000

`council keys add` writes such an entry and prints the key once. Keys are random 32-byte tokens, so one SHA-256
is a sound hash for them (they are not passwords to stretch).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from council.errors import ConfigError, Forbidden, InvalidRequest, Unauthorized, UnknownTenant
from council.retrieval import PUBLIC, check_tenant

KEYS_FILE_ENV = "COUNCIL_KEYS_FILE"
API_KEY_ENV = "COUNCIL_API_KEY"
RIGHTS = ("read", "write", "admin")
EVERY_TENANT = "*"


def key_hash(key: str) -> str:
    """The hex SHA-256 of a key, as the key table stores it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random API key (URL-safe, 256 bits)."""
    return "ck-" + secrets.token_urlsafe(32)


def unknown_tenant(tenant: str) -> UnknownTenant:
    """The one 404 for a tenant that does not exist and for one the caller's key does not cover."""
    return UnknownTenant(f"unknown tenant {tenant!r}", details={"tenant": tenant})


@dataclass(frozen=True)
class Grant:
    """What one key may do. `tenants` holds "*" for every tenant."""

    name: str
    tenants: frozenset[str]
    rights: frozenset[str]
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None

    @property
    def every_tenant(self) -> bool:
        return EVERY_TENANT in self.tenants

    def may(self, right: str, tenant: str) -> bool:
        """Whether this key may `right` ("read" or "write") `tenant`."""
        if "admin" in self.rights:
            return True
        if right not in self.rights:
            return False
        if tenant == PUBLIC:
            return right == "read"  # everyone reads public; only admin writes it
        return self.every_tenant or tenant in self.tenants

    def tenant_for(self, requested: str | None, right: str) -> str:
        """The tenant a request works on: the one it names if this key covers it (else the unknown-tenant 404),
        or, unnamed, the key's only tenant (reads also fall back to public; writes must name one)."""
        if requested is not None:
            check_tenant(requested)
            if self.may(right, requested):
                return requested
            if right not in self.rights:
                raise Forbidden(f"key {self.name!r} has no {right!r} right")
            if requested == PUBLIC:
                raise Forbidden("only an admin key writes the public tenant")
            raise unknown_tenant(requested)
        own = sorted(self.tenants - {EVERY_TENANT})
        if len(own) == 1 and not self.every_tenant and self.may(right, own[0]):
            return own[0]
        if right == "write":
            raise InvalidRequest("tenant: a write names its tenant explicitly")
        if not self.may("read", PUBLIC):
            raise Forbidden(f"key {self.name!r} has no 'read' right")
        return PUBLIC

    def covers(self, tenant: str) -> bool:
        """Whether this key may read `tenant` (for listings such as /v1/status)."""
        return self.may("read", tenant)


# With no credentials configured at all (loopback only, see `council.serving.app`): everything, unnamed.
OPEN = Grant("anonymous", frozenset({EVERY_TENANT}), frozenset(RIGHTS))


@dataclass(frozen=True)
class KeyTable:
    """Hashed keys and their grants; `lookup` compares against every entry in constant time."""

    entries: tuple[tuple[str, Grant], ...] = ()
    source: str = "none"

    @property
    def configured(self) -> bool:
        return bool(self.entries)

    def lookup(self, token: str | None) -> Grant | None:
        """The grant of `token`, or None. Every entry is compared (hmac.compare_digest), found or not."""
        if not token:
            return None
        digest = key_hash(token).encode()
        found: Grant | None = None
        for stored, grant in self.entries:
            if hmac.compare_digest(digest, stored.encode()):
                found = grant
        return found

    def authenticate(self, token: str | None) -> Grant:
        """The caller's grant: OPEN when no keys are configured, else the key's, else Unauthorized."""
        if not self.configured:
            return OPEN
        grant = self.lookup(token)
        if grant is None:
            raise Unauthorized("missing or wrong API key (Authorization: Bearer <key>)")
        return grant


def parse_table(data: Any, source: str) -> list[tuple[str, Grant]]:
    """The entries of a key table document ({"keys": [...]}); ConfigError names a bad field."""
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise ConfigError(f"{source}: expected a mapping with a 'keys' list")
    entries: list[tuple[str, Grant]] = []
    names: set[str] = set()
    for i, raw in enumerate(data["keys"]):
        where = f"{source}: keys[{i}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a mapping")
        unknown = sorted(set(raw) - {"name", "sha256", "tenants", "rights", "requests_per_minute", "tokens_per_minute"})
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {unknown}")
        name, digest = raw.get("name"), raw.get("sha256")
        if not isinstance(name, str) or not name or name in names:
            raise ConfigError(f"{where}.name: a unique, non-empty name is required")
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"{where}.sha256: 64 lowercase hex digits (the key's SHA-256) are required")
        tenants, rights = raw.get("tenants"), raw.get("rights", ["read"])
        if not isinstance(tenants, list) or not tenants:
            raise ConfigError(f"{where}.tenants: a non-empty list of tenant names (or \"*\") is required")
        for t in tenants:
            if t != EVERY_TENANT:
                try:
                    check_tenant(t)
                except InvalidRequest as e:
                    raise ConfigError(f"{where}.tenants: {e.message}") from None
        if not isinstance(rights, list) or not rights or any(r not in RIGHTS for r in rights):
            raise ConfigError(f"{where}.rights: a non-empty list of {list(RIGHTS)}")
        limits = {k: raw.get(k) for k in ("requests_per_minute", "tokens_per_minute")}
        for k, v in limits.items():
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0):
                raise ConfigError(f"{where}.{k}: a positive number")
        names.add(name)
        entries.append((digest, Grant(name, frozenset(tenants), frozenset(rights), **limits)))
    return entries


def load_table(environ: Mapping[str, str] | None = None) -> KeyTable:
    """The key table this process serves with: COUNCIL_KEYS_FILE's entries, plus COUNCIL_API_KEY as an admin
    key over every tenant. Neither set: an empty table (no credentials)."""
    import yaml

    env = os.environ if environ is None else environ
    entries: list[tuple[str, Grant]] = []
    sources: list[str] = []
    path = env.get(KEYS_FILE_ENV)
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{KEYS_FILE_ENV}={path}: cannot read the key table: {e.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{KEYS_FILE_ENV}={path}: not YAML/JSON: {e}") from None
        entries += parse_table(data, path)
        sources.append(path)
    if key := env.get(API_KEY_ENV):
        entries.append((key_hash(key), Grant(API_KEY_ENV, frozenset({EVERY_TENANT}), frozenset(RIGHTS))))
        sources.append(API_KEY_ENV)
    return KeyTable(tuple(entries), " + ".join(sources) or "none")


def table_entry(name: str, key: str, tenants: Sequence[str], rights: Sequence[str]) -> dict[str, Any]:
    """A key table entry for `key` (what `council keys add` appends)."""
    entry = {"name": name, "sha256": key_hash(key), "tenants": list(tenants), "rights": list(rights)}
    parse_table({"keys": [entry]}, "new key")  # the same checks as loading
    return entry


class _Bucket:
    """A token bucket of `per_minute` capacity refilled continuously; it may go negative (tokens are debited
    after the answer), and then admits nothing until it is back above zero."""

    def __init__(self, per_minute: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = per_minute
        self.level = per_minute
        self.at = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def wait_s(self, need: float) -> float:
        """Seconds until `need` is available (0: now)."""
        return max(0.0, (need - self.level) / self.rate)


class RateLimiter:
    """Per-key limits on requests and generated tokens per minute (one limiter per ingress replica: with N
    ingress replicas a key gets up to N times its rate). A key table entry's own limits win over the defaults."""

    def __init__(
        self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None, clock: Any = None
    ) -> None:
        import time

        self.defaults = (requests_per_minute, tokens_per_minute)
        self.clock = clock or time.monotonic
        self._requests: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Bucket] = {}

    def _bucket(self, table: dict[str, _Bucket], grant: Grant, per_minute: float | None) -> _Bucket | None:
        if per_minute is None:
            return None
        bucket = table.get(grant.name)
        if bucket is None:
            bucket = table[grant.name] = _Bucket(per_minute, self.clock())
        bucket.refill(self.clock())
        return bucket

    def admit(self, grant: Grant) -> None:
        """Take one request from the key's allowance, or raise RateLimited with when to retry."""
        from council.errors import RateLimited

        rpm = grant.requests_per_minute or self.defaults[0]
        tpm = grant.tokens_per_minute or self.defaults[1]
        requests = self._bucket(self._requests, grant, rpm)
        tokens = self._bucket(self._tokens, grant, tpm)
        if tokens is not None and tokens.level <= 0:
            wait = tokens.wait_s(1.0)
            raise RateLimited(f"key {grant.name!r} is over {tpm:g} generated tokens per minute", retry_after_s=wait)
        if requests is not None:
            if requests.level < 1:
                wait = requests.wait_s(1.0)
                raise RateLimited(f"key {grant.name!r} is over {rpm:g} requests per minute", retry_after_s=wait)
            requests.level -= 1

    def spend(self, grant: Grant, tokens: int) -> None:
        """Debit the tokens an answer generated."""
        bucket = self._bucket(self._tokens, grant, grant.tokens_per_minute or self.defaults[1])
        if bucket is not None:
            bucket.level -= tokens
