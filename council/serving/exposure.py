"""Secure by default: an app that Serve's proxy exposes beyond loopback starts only with credentials."""

from __future__ import annotations

import ipaddress
import logging

from council.credentials import KeyTable
from council.errors import ConfigError

log = logging.getLogger(__name__)

HOW = (
    "set COUNCIL_KEYS_FILE to a key table (`council keys add --file keys.yaml ...`) or COUNCIL_API_KEY, from a "
    "secret (a Kubernetes secretKeyRef, the head node's environment; never in the Serve config's args), or set "
    "`http.auth: none` in the council config to serve without keys on purpose"
)


def proxy_host() -> str | None:
    """The host Serve's HTTP proxies listen on (`http_options.host`), None when it cannot be read here."""
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        return None if client is None else str(client.http_config.host)
    except Exception as e:  # a private API: never let reading it break start-up
        log.warning("could not read Serve's HTTP host (%s): assuming loopback", e)
        return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def checked_keys(auth: str, keys: KeyTable, host: str | None) -> KeyTable:
    """The key table the app serves with, or ConfigError: exposed (a non-loopback host) with no credentials
    and no explicit `http.auth: none`; or `auth: none` beside configured keys (one of the two is a mistake)."""
    if auth == "none":
        if keys.configured:
            raise ConfigError(f"http.auth is 'none' but keys are configured ({keys.source}): remove one of them")
        log.warning("http.auth: none — the council answers every caller, for every tenant, without a key")
        return keys
    if not keys.configured and host is not None and not is_loopback(host):
        raise ConfigError(f"Serve listens on {host!r} and no credentials are configured: {HOW}")
    return keys
