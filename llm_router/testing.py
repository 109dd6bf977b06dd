"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benches.

It is a real HTTP server (threaded, keep-alive), so the router's client, retries, timeouts and
rate limits are exercised on the wire::

    with ChatServer(default=fixed_label("cs.CV")) as server:
        server.script(Reply(status=503), Reply.answer("hep-th"))
        settings = Settings(api_key="test", base_url=server.url, retry_max_wait_s=0)

Replies queued with :meth:`ChatServer.script` are used first, in order; then ``default``
answers every request. ``server.requests`` records each request's JSON body and headers.

:class:`ScriptedModel` is a responder of known quality: it knows the true label of each paper
it is asked about and is right with a set probability; its mistakes are those real models
make (one of the paper's cross-listed categories, else a label of the same archive).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted response: status, JSON (or raw bytes) body, headers, delay before it."""

    status: int = 200
    body: dict[str, Any] | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0

    @classmethod
    def answer(
        cls,
        content: str,
        *,
        raw: bool = False,
        prompt_tokens: int = 100,
        completion_tokens: int = 5,
        cost: float | None = None,
        model: str = "scripted-model",
        delay_s: float = 0.0,
    ) -> Reply:
        """A successful completion whose message is ``{"label": content}`` (or ``content``
        itself with ``raw=True``)."""
        message = content if raw else json.dumps({"label": content})
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if cost is not None:
            usage["cost"] = cost
        body = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": message},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
        return cls(body=body, delay_s=delay_s)

    @classmethod
    def error(cls, status: int, message: str = "scripted error", **headers: str) -> Reply:
        """An HTTP error with an OpenAI-style error body."""
        body = {"error": {"message": message, "type": "scripted", "code": status}}
        return cls(status=status, body=body, headers=dict(headers))


def fixed_label(label: str, delay_s: float = 0.0) -> Callable[[dict[str, Any]], Reply]:
    """A default responder that always answers ``label``."""
    return lambda _request: Reply.answer(label, delay_s=delay_s)


@dataclass(frozen=True)
class Truth:
    """What a :class:`ScriptedModel` knows of a paper: its label and its cross-listings."""

    label: str
    listed: tuple[str, ...] = ()


_PAPER = re.compile(r"<<<PAPER (\w+)>>>\n(.*)\n<<<END PAPER \1>>>", re.DOTALL)


def paper_key(text: str) -> str:
    """How a :class:`ScriptedModel` recognises a paper: its first 300 non-space characters."""
    return hashlib.sha256("".join(text.split())[:300].encode()).hexdigest()


class ScriptedModel:
    """A chat model of known accuracy, as a :class:`ChatServer` responder.

    For each request it finds the paper between the prompt's markers and the labels it may
    answer (the structured-output enum, else ``labels``). With probability ``accuracy`` it
    answers the true label (when offered); otherwise one of the paper's cross-listed
    categories, else a label of the same archive, else any other offered label. The choice
    is a pure function of the paper, the offered labels and ``seed``, so retries and repeated
    runs agree. When the request asks for ``logprobs``, the label's tokens carry the model's
    belief: higher, on average, when it is right (``informative``). Papers it does not know
    are answered with a random offered label.
    """

    def __init__(
        self,
        truths: Mapping[str, Truth],
        labels: Sequence[str],
        accuracy: float,
        *,
        seed: int = 0,
        informative: bool = True,
        model: str = "scripted-model",
    ) -> None:
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"accuracy must be within [0, 1], got {accuracy}")
        self.truths = dict(truths)
        self.labels = tuple(labels)
        self.accuracy = accuracy
        self.seed = seed
        self.informative = informative
        self.model = model

    def answer(self, text: str, offered: Sequence[str]) -> tuple[str, float]:
        """The label this model gives ``text`` among ``offered``, and its belief in it."""
        truth = self.truths.get(paper_key(text))
        material = f"{self.seed}:{paper_key(text)}:{','.join(sorted(offered))}"
        rng = random.Random(hashlib.sha256(material.encode()).digest())
        right = rng.random() < self.accuracy
        if truth is None:
            return rng.choice(list(offered)), rng.uniform(0.05, 0.5)
        if right and truth.label in offered:
            label = truth.label
        else:
            wrong = [c for c in offered if c != truth.label]
            archive = truth.label.split(".", 1)[0]
            crossed = [c for c in truth.listed if c in wrong]
            kin = [c for c in wrong if c.split(".", 1)[0] == archive]
            label = rng.choice(crossed or kin or wrong or list(offered))
        if self.informative:
            belief = rng.betavariate(6, 2) if label == truth.label else rng.betavariate(2, 3)
        else:
            belief = rng.uniform(0.2, 0.9)
        return label, max(1e-6, belief)

    def __call__(self, body: dict[str, Any]) -> Reply:
        messages = body.get("messages") or [{}]
        found = _PAPER.search(str(messages[min(1, len(messages) - 1)].get("content", "")))
        text = found.group(2) if found else ""
        label, belief = self.answer(text, _offered(body) or self.labels)
        reply = Reply.answer(label, model=self.model)
        if body.get("logprobs") and isinstance(reply.body, dict):
            opening = '{"label": "'
            tokens = [(opening, 0.0), (label, math.log(belief)), ('"}', 0.0)]
            reply.body["choices"][0]["logprobs"] = {
                "content": [{"token": t, "logprob": lp} for t, lp in tokens]
            }
        return reply


def _offered(body: dict[str, Any]) -> list[str]:
    """The labels a request's structured-output schema allows (without "none")."""
    fmt = body.get("response_format") or {}
    schema: Any = (
        fmt.get("json_schema", {}).get("schema") if "json_schema" in fmt else fmt.get("schema")
    )
    try:
        enum = schema["properties"]["label"]["enum"]
    except (TypeError, KeyError, AttributeError):
        return []
    return [c for c in enum if isinstance(c, str) and c != "none"]


@dataclass
class Recorded:
    """One request as the server saw it."""

    body: dict[str, Any]
    headers: dict[str, str]
    at: float


class ChatServer:
    """A threaded chat-completions server on 127.0.0.1 with scripted replies."""

    def __init__(
        self,
        default: Callable[[dict[str, Any]], Reply] | None = None,
        *,
        port: int = 0,
    ) -> None:
        self.default = default or fixed_label("cs.LG")
        self.requests: list[Recorded] = []
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # notified on every request
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL for the OpenAI client (``http://127.0.0.1:PORT/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def port(self) -> int:
        if self._httpd is None:
            return self._port
        return int(self._httpd.server_address[1])

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def wait_for(self, requests: int, *, stop: Callable[[], bool] = lambda: False) -> bool:
        """Block until the server has received ``requests`` requests (True), or ``stop()``
        says to give up, checked whenever a request arrives and every second (False)."""
        with self._arrived:
            while len(self.requests) < requests:
                if stop():
                    return False
                self._arrived.wait(1.0)
        return True

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        with self._lock:
            self._queue.extend(replies)

    def _next_reply(self, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        with self._lock:
            self.requests.append(Recorded(body, headers, time.monotonic()))
            self._arrived.notify_all()
            if self._queue:
                return self._queue.popleft()
        return self.default(body)

    def start(self) -> ChatServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real endpoint
            # Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus the
            # client's delayed ACK add ~40 ms to every response.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - a model list like llama.cpp's: no prices
                payload = json.dumps(
                    {"object": "list", "data": [{"id": "scripted-model", "object": "model"}]}
                ).encode()
                self.send_response(200 if self.path.rstrip("/").endswith("/models") else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                if server._httpd is None:  # stopped: drop kept-alive connections too
                    self.close_connection = True
                    return
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_unparsed": raw.decode("utf-8", "replace")}
                reply = server._next_reply(body, {k.lower(): v for k, v in self.headers.items()})
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if isinstance(reply.body, bytes):
                    payload = reply.body
                else:
                    payload = json.dumps(reply.body if reply.body is not None else {}).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to answer

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128

        self._httpd = Server(("127.0.0.1", self._port), Handler)
        self._port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; later requests get 'connection refused'."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
