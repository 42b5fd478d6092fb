"""A scripted OpenAI-compatible chat server, run as a real process on loopback: what a test needs of a remote
member's endpoint that a real model cannot be asked to do on cue (fail twice, rate-limit, hang, refuse a key).

Each request's answer is the next step scripted for its `model` (then that model's default step): a status with
an optional Retry-After, a hang, or an answer (plain or streamed, piece by piece). Every request is recorded
with the server's own clock (attempts are counted here, where they arrive), what it asked for, and whether the
client went away before the answer ended.

    with ScriptedServer.start(key="k") as server:
        server.script("m", {"status": 500}, {"text": "forty two"})
        ...  # a client calls server.url with model "m"
        [first, second] = server.log("m")

`python -m council.testing.scripted_openai --port P` runs the server; the key it accepts is $SCRIPTED_OPENAI_KEY
(unset: any). Test use only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

# At module level: the routes' annotations are resolved against this module's names (`from __future__`).
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

KEY_ENV = "SCRIPTED_OPENAI_KEY"


class _State:
    def __init__(self) -> None:
        self.steps: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
        self.defaults: dict[str, dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []
        self.inflight: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)

    def next_step(self, model: str) -> dict[str, Any]:
        queue = self.steps[model]
        return queue.popleft() if queue else self.defaults.get(model, {"text": f"answer of {model}"})


def _words(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content") or "").split()) + 3 for m in messages)


def _cut(text: str, stop: Any) -> tuple[str, bool]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def create_app(key: str | None) -> Any:
    """The server's FastAPI app (`key`: the bearer token it accepts; None: any)."""
    app = FastAPI()
    state = _State()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/control/script")
    async def script(body: dict[str, Any]) -> dict[str, int]:
        model = str(body["model"])
        state.steps[model].extend(body.get("steps") or [])
        if body.get("default") is not None:
            state.defaults[model] = body["default"]
        return {"queued": len(state.steps[model])}

    @app.post("/control/reset")
    async def reset() -> dict[str, str]:
        state.__init__()  # type: ignore[misc]
        return {"status": "reset"}

    @app.get("/control/log")
    async def log() -> dict[str, Any]:
        return {"requests": state.log, "peak": dict(state.peak)}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        model = str(body.get("model"))
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        record: dict[str, Any] = {
            "n": len(state.log), "t": time.monotonic(), "model": model, "stream": bool(body.get("stream")),
            "messages": body.get("messages"), "headers": {k: v for k, v in request.headers.items()
                                                          if k.lower() != "authorization"},
            **{k: body.get(k) for k in ("max_tokens", "temperature", "top_p", "seed", "stop", "stream_options")},
            "auth_ok": key is None or given == key, "disconnected": False, "status": 200,
        }  # fmt: skip
        state.log.append(record)
        if not record["auth_ok"]:
            record["status"] = 401
            message = f"Incorrect API key provided: {given}. You can find your API key at your dashboard."
            error = {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}
            return JSONResponse({"error": error}, status_code=401)
        step = state.next_step(model)
        state.inflight[model] += 1
        state.peak[model] = max(state.peak[model], state.inflight[model])
        streaming = False
        try:
            response = await _answer(request, body, step, record, state, model)
            streaming = isinstance(response, StreamingResponse)  # its generator counts itself out
            return response
        finally:
            if not streaming:
                state.inflight[model] -= 1

    async def _answer(
        request: Request, body: dict[str, Any], step: dict[str, Any], record: dict[str, Any], state: _State, model: str
    ) -> Any:
        if await _wait(request, float(step.get("hang_s", 0)) + float(step.get("delay_s", 0)), record):
            return JSONResponse({}, status_code=499)
        status = int(step.get("status", 200))
        record["status"] = status
        if status != 200:
            headers = {"Retry-After": str(step["retry_after"])} if "retry_after" in step else {}
            error = {"message": step.get("message", f"scripted {status}"), "type": "server_error"}
            return JSONResponse({"error": error}, status_code=status, headers=headers)
        text, stopped = _cut(str(step.get("text", "")), body.get("stop"))
        finish = "stop" if stopped else str(step.get("finish", "stop"))
        usage = {"prompt_tokens": _words(body.get("messages") or []), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            out = {**base, "object": "chat.completion", "choices": [choice]}
            return JSONResponse({**out, "usage": usage} if step.get("usage", True) else out)
        pieces = [w + " " for w in text.split(" ")] if text else []
        if pieces:
            pieces[-1] = pieces[-1][:-1]
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage")) and step.get("usage", True)

        async def events() -> AsyncIterator[str]:
            def event(choices: list[dict[str, Any]], **extra: Any) -> str:
                return (
                    f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', 'choices': choices, **extra})}\n\n"
                )

            def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
                return event([{"index": 0, "delta": delta, "finish_reason": finish_reason}])

            done = False
            try:
                yield chunk({"role": "assistant", "content": ""})
                for piece in pieces:
                    await asyncio.sleep(float(step.get("piece_delay_s", 0)))
                    yield chunk({"content": piece})
                yield chunk({}, finish)
                if wants_usage:
                    yield event([], usage=usage)
                yield "data: [DONE]\n\n"
                done = True
            finally:
                record["disconnected"] = not done
                record["ended"] = time.monotonic()
                state.inflight[model] -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _wait(request: Request, seconds: float, record: dict[str, Any]) -> bool:
        """Sleep `seconds`, watching the client: True (and recorded) when it went away meanwhile."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if await request.is_disconnected():
                record["disconnected"] = True
                record["ended"] = time.monotonic()
                return True
            await asyncio.sleep(0.02)
        return False

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ScriptedServer:
    """A running scripted server process and its control calls."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}/v1"

    @classmethod
    @contextmanager
    def start(
        cls, key: str | None = None, port: int | None = None, timeout_s: float = 60.0
    ) -> Iterator[ScriptedServer]:
        """Start the server on a free loopback port (accepting bearer `key`; None: any) and stop it after."""
        port = port or free_port()
        env = {**os.environ, KEY_ENV: key or ""}
        cmd = [sys.executable, "-m", "council.testing.scripted_openai", "--port", str(port)]
        process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        server = cls(process, port)
        try:
            server._wait_ready(timeout_s)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _wait_ready(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"scripted server exited with {self.process.returncode}: {err[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1, trust_env=False).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"scripted server not up on port {self.port} after {timeout_s:g}s")

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        import httpx

        url = f"http://127.0.0.1:{self.port}/control/{path}"
        r = httpx.request(method, url, json=body, timeout=10, trust_env=False)
        r.raise_for_status()
        return r.json()

    def script(self, model: str, *steps: dict[str, Any], default: dict[str, Any] | None = None) -> None:
        """Queue `steps` as the answers to `model`'s next requests; `default` answers once they are used up."""
        self._control("POST", "script", {"model": model, "steps": list(steps), "default": default})

    def log(self, model: str | None = None) -> list[dict[str, Any]]:
        """The requests received (of `model`, or all), in arrival order."""
        requests: list[dict[str, Any]] = self._control("GET", "log")["requests"]
        return [r for r in requests if model is None or r["model"] == model]

    def peak(self, model: str) -> int:
        """Most requests for `model` the server held at once."""
        return int(self._control("GET", "log")["peak"].get(model, 0))

    def reset(self) -> None:
        self._control("POST", "reset")


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = create_app(os.environ.get(KEY_ENV) or None)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
