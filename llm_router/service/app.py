"""``python -m llm_router serve``: one Router behind an HTTP API (FastAPI) and a web page.

```
POST /v1/classify        {"text": "..."}      → the Classification (with name and group)
POST /v1/classify/batch  {"texts": [...]}     → {"results": [...]}, a row's error in place
GET  /healthz  /readyz  /metrics  /docs  /ui
```
The chain is built once, at start-up, off the event loop; every classification runs in
worker threads (the router is synchronous), so a slow LLM call never blocks ``/healthz``,
and the LLM's rate limit, budget, cache and circuit breaker are shared by all requests.
Errors are ``{"error": {"type": ..., "message": ...}}``. Configuration: ``LLM_ROUTER_*``
(``SERVER_TOKEN``, ``SERVER_MAX_BODY_BYTES``, ``SERVER_MAX_BATCH``, ``SERVER_MAX_INFLIGHT``,
``SERVER_MAX_QUEUE``), see the README.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
)
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_router.errors import ClassifierError, RouterError, reason_of
from llm_router.reasons import Reason
from llm_router.router import Router
from llm_router.schemas import Classification
from llm_router.service.middleware import (
    Admission,
    BodyLimit,
    Guard,
    ServerToken,
    error_body,
    error_response,
)
from llm_router.service.prometheus import ServiceMetrics
from llm_router.settings import Settings

logger = logging.getLogger(__name__)
disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series


class ClassifyRequest(BaseModel):
    text: str = Field(description="the abstract (title first, if you have one)")


class BatchRequest(BaseModel):
    texts: list[Any] = Field(description="abstracts; a bad row gets its error in place")


def _row_error(exc: BaseException) -> dict[str, Any]:
    if reason_of(exc) == Reason.INVALID_INPUT:
        return error_body("invalid_input", str(exc))
    if isinstance(exc, RouterError):
        return error_body("unavailable", str(exc))
    return error_body("internal", str(exc) if isinstance(exc, InternalError) else "internal error")


class InternalError(Exception):
    """A failure of the service itself (a bug), logged once with its incident id."""

    def __init__(self, incident: str) -> None:
        super().__init__(f"internal error (incident {incident}); the server log has the details")
        self.incident = incident


class MicroBatcher:
    """Requests that arrive while a batch is being classified wait and go together into the
    next one: the local models answer them in one vectorised call. Used when the chain's LLM
    link cannot answer at all (no key), so a batch never waits on a slow LLM call."""

    def __init__(self, router: Router, workers: ThreadPoolExecutor, max_batch: int = 64):
        self.router = router
        self.workers = workers
        self.max_batch = max_batch
        self._pending: list[tuple[object, asyncio.Future[Any]]] = []
        self._draining = False

    async def classify(self, text: object) -> Classification | Exception:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((text, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        result: Classification | Exception = await future
        return result

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                texts = [text for text, _ in batch]
                results: list[Any]
                try:
                    results = await loop.run_in_executor(
                        self.workers, self.router.classify_batch, texts
                    )
                except Exception:  # noqa: BLE001 - a bug, not a condition: logged, then 500
                    incident = uuid.uuid4().hex[:12]
                    logger.exception(
                        "classifying a batch of %d failed (incident %s)", len(batch), incident
                    )
                    results = [InternalError(incident)] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._draining = False


def readiness(router: Router) -> tuple[bool, list[str]]:
    """Whether at least one classifier of the chain can answer, and why each cannot."""
    reasons = []
    ready = False
    for classifier in router.classifiers:
        # A strategy's LLM link (a cascade answers some texts locally, but only the local
        # models listed after it can be counted on).
        link = getattr(classifier, "llm", classifier)
        standing = getattr(link, "unavailable", None)
        if isinstance(standing, ClassifierError):
            reasons.append(f"{classifier.name}: {standing.reason}")
            continue
        breaker = getattr(getattr(link, "inner", link), "breaker", None)
        if breaker is not None and breaker.is_open:  # switched off for its cool-down
            reasons.append(f"{classifier.name}: circuit_open")
            continue
        get = getattr(classifier, "get", None)
        if callable(get):  # a lazily loaded local model: load it now
            try:
                get()
            except ClassifierError as exc:
                reasons.append(f"{classifier.name}: {exc.reason}")
                continue
        ready = True
    return ready, reasons


def create_app(
    settings: Settings | None = None, *, router: Router | None = None, ui: bool = True
) -> FastAPI:
    """The service app; ``router`` defaults to ``Router.from_settings(settings)``, built at
    start-up."""
    settings = settings or Settings()
    token = ServerToken(settings.server_token)
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    workers = ThreadPoolExecutor(
        max_workers=settings.server_max_inflight, thread_name_prefix="llm-router-serve"
    )
    state: dict[str, Any] = {"router": router, "ready": False, "reasons": ["starting"]}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        built = state["router"] or await loop.run_in_executor(
            workers, Router.from_settings, settings
        )
        state["router"] = built
        state["ready"], state["reasons"] = await loop.run_in_executor(workers, readiness, built)
        state["admission"] = Admission(settings.server_max_inflight, settings.server_max_queue)
        head = built.classifiers[0] if built.classifiers else None
        if isinstance(getattr(head, "unavailable", None), ClassifierError):
            state["batcher"] = MicroBatcher(built, workers)
        logger.info("llm-router ready=%s (%s)", state["ready"], "; ".join(state["reasons"]))
        try:
            yield
        finally:
            built.close()
            workers.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="llm-router",
        summary="arXiv primary categories for abstracts: LLM first, local models second.",
        lifespan=lifespan,
    )

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_input", _one_line(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        """FastAPI's own errors in the documented shape; a body it could not parse at all
        (invalid UTF-8, JSON nested too deep, a number too long) is an invalid input."""
        if exc.status_code == 400:
            return error_response(422, "invalid_input", f"the body is not valid JSON: {exc.detail}")
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, kind, str(exc.detail), **(exc.headers or {}))

    async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(workers, function, *args)

    @app.post("/v1/classify", response_model=Classification)
    async def classify(body: ClassifyRequest) -> Response:
        """Classify one abstract."""
        router_: Router = state["router"]
        batcher: MicroBatcher | None = state.get("batcher")
        outcome: Classification | Exception
        if batcher is not None:
            outcome = await batcher.classify(body.text)
        else:
            outcome = await in_thread(_classify_one, router_, body.text)
        if isinstance(outcome, Exception):
            metrics.failed(outcome)
            row = _row_error(outcome)
            status = {"invalid_input": 422, "internal": 500}.get(row["error"]["type"], 503)
            return JSONResponse(row, status_code=status)
        metrics.classified(outcome)
        return JSONResponse(outcome.model_dump(mode="json"))

    @app.post("/v1/classify/batch")
    async def classify_batch(body: BatchRequest) -> Response:
        """Classify many abstracts; results keep the input order, a bad row holds its error."""
        if len(body.texts) > settings.server_max_batch:
            return error_response(
                413,
                "too_large",
                f"{len(body.texts)} texts, at most {settings.server_max_batch} "
                "(LLM_ROUTER_SERVER_MAX_BATCH)",
            )
        router_: Router = state["router"]
        if "batcher" in state:  # local models only: one vectorised call
            results = await in_thread(router_.classify_batch, body.texts)
        else:
            # Rows go to the service's own workers (LLM_ROUTER_SERVER_MAX_INFLIGHT threads in
            # all), never to threads of their own outside that limit.
            results = await asyncio.gather(
                *(in_thread(_classify_one, router_, text) for text in body.texts)
            )
        rows = []
        for result in results:
            if isinstance(result, Classification):
                metrics.classified(result)
                rows.append(result.model_dump(mode="json"))
            else:
                metrics.failed(result)
                rows.append(_row_error(result))
        return JSONResponse({"results": rows})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up (answers even while classifications are in flight)."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        """200 when at least one classifier of the chain can answer now (a local model that
        appeared since start-up counts; an LLM whose breaker is open does not)."""
        if state["router"] is not None:
            state["ready"], state["reasons"] = await in_thread(readiness, state["router"])
        body = {"ready": state["ready"], "unavailable": state["reasons"]}
        return JSONResponse(body, status_code=200 if state["ready"] else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(Guard, token=token, metrics=metrics, state=state)
    app.add_middleware(BodyLimit, limit=settings.server_max_body_bytes)
    if ui:
        from llm_router.service.page import mount_page

        async def admit(work: Callable[[], Any]) -> Any:
            """The page's work under the same admission as /v1 requests; None when full."""
            admission: Admission | None = state.get("admission")
            if admission is None or not admission.try_enter():
                return None
            return await admission.run(lambda: in_thread(work))

        mount_page(app, lambda: state["router"], settings, token, metrics, admit)
    return app


def _classify_one(router: Router, text: object) -> Classification | Exception:
    try:
        return router.classify(text)  # type: ignore[arg-type]
    except (RouterError, TypeError, ValueError) as exc:
        return exc


def _one_line(exc: RequestValidationError) -> str:
    """FastAPI's error list as one line: what was wrong, and where."""
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        kind = error.get("type", "")
        if kind == "json_invalid":
            parts.append("the body is not valid JSON")
        elif kind == "missing":
            parts.append(f"missing field {where!r}")
        elif kind == "model_attributes_type" and isinstance(error.get("input"), str | bytes):
            parts.append("the body is not a JSON object (send Content-Type: application/json)")
        elif kind in ("string_type", "list_type", "model_attributes_type", "dict_type"):
            expected = {"string_type": "a string", "list_type": "a list"}.get(kind, "an object")
            parts.append(f"{where or 'the body'} must be {expected}")
        else:
            parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def serve(*, host: str = "127.0.0.1", port: int = 8000, ui: bool = True) -> None:
    """Run the app under uvicorn (one process; the chain is loaded once)."""
    import uvicorn

    uvicorn.run(create_app(ui=ui), host=host, port=port, log_level="info")
