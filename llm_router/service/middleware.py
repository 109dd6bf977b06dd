"""The service's ASGI middleware: request-body limit, bearer token, admission, metrics.

Plain ASGI classes, not Starlette's ``BaseHTTPMiddleware``: they sit in front of every
request, and that wrapper's per-request cost showed in the load bench (BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi.responses import JSONResponse
from pydantic import SecretStr

from llm_router.service.prometheus import ServiceMetrics

T = TypeVar("T")
OPEN_PATHS = ("/healthz", "/readyz", "/metrics")
GUARDED_PREFIXES = ("/v1/", "/docs", "/openapi.json", "/redoc")


class ServerToken:
    """``LLM_ROUTER_SERVER_TOKEN``, unwrapped once; compared in constant time, never shown."""

    def __init__(self, secret: SecretStr | None) -> None:
        self._value = secret.get_secret_value().encode() if secret is not None else None

    @property
    def required(self) -> bool:
        return self._value is not None

    def matches(self, given: str | bytes) -> bool:
        """Whether ``given`` is the token (always true when none is set)."""
        if self._value is None:
            return True
        candidate = given.encode() if isinstance(given, str) else given
        return hmac.compare_digest(candidate, self._value)

    def __repr__(self) -> str:
        return "ServerToken('**********')" if self.required else "ServerToken(None)"


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


def error_response(status: int, kind: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(error_body(kind, message), status_code=status, headers=headers or None)


class Admission:
    """At most ``inflight`` requests worked on and ``queue`` waiting; past that, refuse."""

    def __init__(self, inflight: int, queue: int) -> None:
        self.inflight = inflight
        self.queue = queue
        self.admitted = 0
        self._slots = asyncio.Semaphore(inflight)

    def try_enter(self) -> bool:
        if self.admitted >= self.inflight + self.queue:
            return False
        self.admitted += 1
        return True

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        try:
            async with self._slots:
                return await work()
        finally:
            self.admitted -= 1


class BodyLimit:
    """ASGI middleware: 413 as soon as a body passes ``limit`` bytes, whether it announces
    a ``Content-Length`` or comes chunked."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(send)
            return
        received = 0
        started = False
        refused = False

        async def limited_receive() -> Any:
            # Past the limit the 413 goes out at once and the app sees the client leave
            # (raising here would be turned into a 400 by the body parser).
            nonlocal received, started, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    refused = True
                    if not started:
                        started = True
                        await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if refused:
                return  # the 413 has been sent: whatever the app answers is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, tracking_send)

    async def _refuse(self, send: Any) -> None:
        response = error_response(
            413,
            "too_large",
            f"request body over {self.limit} bytes (LLM_ROUTER_SERVER_MAX_BODY_BYTES)",
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(k.encode(), v.encode()) for k, v in response.headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": response.body})


class Guard:
    """ASGI middleware: the bearer token, admission (in flight + queue, else 503) and the
    request metrics. Plain ASGI, as it sits in front of every request."""

    def __init__(
        self, app: Any, *, token: ServerToken, metrics: ServiceMetrics, state: dict[str, Any]
    ) -> None:
        self.app = app
        self.token = token
        self.metrics = metrics
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        endpoint = endpoint_of(path)
        status = 500

        async def tracking_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            guarded = self.token.required and path.startswith(GUARDED_PREFIXES)
            if guarded and not self._authorised(scope):
                response = error_response(
                    401,
                    "unauthorized",
                    "missing or wrong bearer token",
                    **{"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, tracking_send)
                return
            if not path.startswith("/v1/"):
                await self.app(scope, receive, tracking_send)
                return
            admission: Admission | None = self.state.get("admission")
            if admission is None or not admission.try_enter():
                response = error_response(
                    503,
                    "overloaded",
                    "too many requests in flight; retry shortly",
                    **{"Retry-After": "1"},
                )
                await response(scope, receive, tracking_send)
                return
            await admission.run(lambda: self.app(scope, receive, tracking_send))
        finally:
            self.metrics.request(endpoint, status, time.perf_counter() - started)

    def _authorised(self, scope: dict[str, Any]) -> bool:
        given = b""
        for key, value in scope.get("headers") or []:
            if key == b"authorization":
                given = value
        scheme, _, credential = given.partition(b" ")
        return scheme.lower() == b"bearer" and self.token.matches(credential)


def endpoint_of(path: str) -> str:
    for known in ("/v1/classify/batch", "/v1/classify", *OPEN_PATHS, "/docs", "/openapi.json"):
        if path == known:
            return known
    return "/ui" if path.startswith("/ui") else "other"
