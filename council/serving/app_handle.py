"""The client's transport inside a cluster: a Serve application handle, with Ray's errors made the council's."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from council.errors import Unreachable
from council.serving import ray_errors

log = logging.getLogger(__name__)


def app_handle(app_name: str) -> Any:
    """`serve.get_app_handle(app_name)`; Unreachable when no Serve application of that name runs here."""
    from ray import serve

    try:
        return serve.get_app_handle(app_name)
    except Exception as e:  # Serve raises RayServeException for an unknown app, or when Serve is not running
        raise Unreachable(f"no Serve application named {app_name!r}: {e}") from None


def deployed(app_name: str) -> bool:
    """True when a Serve application named `app_name` runs on the joined cluster."""
    try:
        app_handle(app_name)
    except Unreachable as e:  # no Serve instance, or no such app: both mean "not deployed here"
        log.info("%s", e.message)
        return False
    return True


class HandleTransport:
    """Calls RouterIngress methods through a Serve handle; Ray's failures come back as council errors."""

    def __init__(self, handle: Any, timeout_s: float, api_key: str | None = None) -> None:
        self.handle = handle
        self.timeout_s = timeout_s
        # Sent with the calls that need it (ask, ask_stream, ingest, status), as the HTTP client sends its key.
        self.keyed = {"api_key": api_key} if api_key else {}

    @classmethod
    def connect(
        cls, app_name: str, *, address: str | None, timeout_s: float, api_key: str | None = None
    ) -> HandleTransport:
        """Join the Ray cluster at `address` (else RAY_ADDRESS, else the running one) and take the app's handle."""
        import ray

        if not ray.is_initialized():
            ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False)
        return cls(app_handle(app_name), timeout_s, api_key)

    def call(self, method: str, *args: Any, keyed: bool = False) -> Any:
        """Call `method` and wait for its result (at most `timeout_s`); `keyed`: with the caller's key."""
        kwargs = self.keyed if keyed else {}
        try:
            return getattr(self.handle, method).remote(*args, **kwargs).result(timeout_s=self.timeout_s)
        except Exception as e:
            raise ray_errors.for_client(e) from None

    async def astream(self, method: str, *args: Any) -> AsyncIterator[Any]:
        """Call a streaming `method` (handle.options(stream=True)) and yield what it yields; closing the iterator
        cancels the call. `timeout_s` bounds each wait for the next item."""
        responses = self.handle.options(stream=True)
        stream = getattr(responses, method).remote(*args, **self.keyed)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(stream.__anext__(), self.timeout_s)
                except StopAsyncIteration:
                    return
                except Exception as e:
                    raise ray_errors.for_client(e) from None
                yield item
        finally:
            stream.cancel()

    async def acall(self, method: str, *args: Any, keyed: bool = False) -> Any:
        """`call` for asyncio code."""
        kwargs = self.keyed if keyed else {}
        try:
            return await asyncio.wait_for(getattr(self.handle, method).remote(*args, **kwargs), self.timeout_s)
        except Exception as e:
            raise ray_errors.for_client(e) from None
