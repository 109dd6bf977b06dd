"""The HTTP service under a real uvicorn on 127.0.0.1, and its page in a real Chromium."""

from __future__ import annotations

import asyncio
import gc
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip(
    "fastapi", reason='the [serve] extra is not installed: pip install -e ".[serve]"'
)
pytest.importorskip(
    "gradio", reason='the [serve] extra is not installed: pip install -e ".[serve]"'
)
import httpx  # noqa: E402
import uvicorn  # noqa: E402

from llm_router import Router  # noqa: E402
from llm_router.schemas import DEFAULT_LLM_CONFIDENCE  # noqa: E402
from llm_router.service.app import create_app  # noqa: E402
from llm_router.testing import Reply  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TEXT = (
    "We prove existence and uniqueness of weak solutions to nonlinear parabolic equations "
    "with measure data on bounded domains."
)


class LiveServer:
    """A real uvicorn serving ``app`` on a free port of 127.0.0.1, in a thread."""

    def __init__(self, app) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def serve(make_settings, trained_models):
    """Start a server with settings overrides; yields a function that returns it."""
    started = []

    def start(ui: bool = False, **overrides):
        overrides.setdefault("model_dir", trained_models)
        live = LiveServer(create_app(make_settings(**overrides), ui=ui)).__enter__()
        started.append(live)
        return live

    yield start
    for live in started:
        live.__exit__()
    gc.collect()  # what the servers left is collected (and reported) within this test


def test_classify_answers_with_the_label_its_name_and_group(serve, make_settings, trained_models):
    live = serve(api_key=None)
    reply = httpx.post(f"{live.url}/v1/classify", json={"text": TEXT})
    assert reply.status_code == 200
    body = reply.json()
    direct = Router.from_settings(make_settings(api_key=None, model_dir=trained_models)).classify(
        TEXT
    )
    assert (body["label"], body["source"], body["fallback_reason"]) == (
        direct.label,
        "tfidf",
        "no_api_key",
    )
    assert body["name"] == direct.name and body["group"] == direct.group
    assert len(body["candidates"]) == 5
    assert body["confidence"] == pytest.approx(direct.confidence)  # the local probability
    assert body["confidence"] == pytest.approx(body["candidates"][0]["score"])


def test_the_llm_answers_through_the_service(serve, server):
    server.script(Reply.answer("math.AP"))
    live = serve()
    body = httpx.post(f"{live.url}/v1/classify", json={"text": TEXT}).json()
    assert (body["label"], body["source"], body["group"]) == ("math.AP", "llm", "Mathematics")
    assert server.count == 1
    assert body["confidence"] == DEFAULT_LLM_CONFIDENCE  # no calibration profile: the default
    assert body["llm_answer"]["label"] == "math.AP"


@pytest.mark.parametrize(
    ("content", "headers", "words"),
    [
        (b"not json", {"content-type": "application/json"}, "not valid JSON"),
        (b'{"texts": ["a"]}', {"content-type": "application/json"}, "missing field 'text'"),
        (b'{"text": 42}', {"content-type": "application/json"}, "text must be a string"),
        (b'{"text": ""}', {"content-type": "application/json"}, "empty"),
        (b'{"text": " \\n\\t "}', {"content-type": "application/json"}, "whitespace"),
        (b'{"text": "x"}', {"content-type": "text/plain"}, "Content-Type: application/json"),
    ],
)
def test_bad_input_is_a_422_with_one_line_and_sends_nothing(serve, server, content, headers, words):
    live = serve()
    reply = httpx.post(f"{live.url}/v1/classify", content=content, headers=headers)
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["type"] == "invalid_input" and words in error["message"]
    assert "\n" not in error["message"] and server.count == 0


def test_a_batch_keeps_order_and_holds_each_bad_rows_error(serve, server):
    server.default = lambda _b: Reply.answer("math.AP")
    live = serve()
    texts = [TEXT, "", 7, "   ", TEXT + " Second."]
    reply = httpx.post(f"{live.url}/v1/classify/batch", json={"texts": texts})
    assert reply.status_code == 200
    results = reply.json()["results"]
    assert [r.get("label") for r in results] == ["math.AP", None, None, None, "math.AP"]
    assert [r["error"]["type"] for r in results[1:4]] == ["invalid_input"] * 3
    assert server.count == 2
    not_a_list = httpx.post(f"{live.url}/v1/classify/batch", json={"texts": "abc"})
    assert not_a_list.status_code == 422
    assert not_a_list.json()["error"]["message"] == "texts must be a list"


def test_a_failed_row_in_a_batch_does_not_fail_the_others(serve, server, tmp_path):
    server.default = lambda _b: Reply.error(401)
    live = serve(model_dir=tmp_path / "no-models")  # the LLM is the only classifier
    results = httpx.post(f"{live.url}/v1/classify/batch", json={"texts": [TEXT, ""]}).json()
    assert [r["error"]["type"] for r in results["results"]] == ["unavailable", "invalid_input"]


def test_bodies_and_batches_over_the_limits_get_413(serve):
    live = serve(server_max_body_bytes=2000, server_max_batch=3)
    big = {"text": "x" * 5000}
    assert httpx.post(f"{live.url}/v1/classify", json=big).status_code == 413

    def chunks():  # no Content-Length: chunked transfer
        for _ in range(10):
            yield b"x" * 500

    chunked = httpx.post(
        f"{live.url}/v1/classify", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413 and chunked.json()["error"]["type"] == "too_large"
    many = httpx.post(f"{live.url}/v1/classify/batch", json={"texts": ["a b c"] * 4})
    assert many.status_code == 413 and "LLM_ROUTER_SERVER_MAX_BATCH" in many.text


def test_a_token_guards_v1_and_docs_but_not_health(serve, caplog):
    token = "s3cret-token-value"
    live = serve(api_key=None, server_token=token)
    for path in ("/v1/classify", "/docs", "/openapi.json"):
        method = httpx.post if path.startswith("/v1") else httpx.get
        kwargs = {"json": {"text": TEXT}} if path.startswith("/v1") else {}
        assert method(f"{live.url}{path}", **kwargs).status_code == 401
        wrong = method(f"{live.url}{path}", headers={"Authorization": "Bearer nope"}, **kwargs)
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "unauthorized"
        right = method(f"{live.url}{path}", headers={"Authorization": f"Bearer {token}"}, **kwargs)
        assert right.status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{live.url}{path}").status_code == 200
    assert token not in caplog.text


def test_readyz_is_503_with_reasons_when_nothing_can_answer(serve, tmp_path):
    live = serve(api_key=None, model_dir=tmp_path / "empty")
    reply = httpx.get(f"{live.url}/readyz")
    assert reply.status_code == 503
    assert reply.json()["unavailable"] == [
        "llm: no_api_key",
        "bert: missing_artifacts",
        "tfidf: missing_artifacts",
    ]
    assert httpx.get(f"{live.url}/healthz").json() == {"status": "ok"}


def test_metrics_count_requests_classifications_tokens_and_cache_hits(serve, server):
    server.default = lambda _b: Reply.answer(
        "math.AP", prompt_tokens=120, completion_tokens=6, cost=0.001
    )
    live = serve()
    for _ in range(2):  # the second is a cache hit
        httpx.post(f"{live.url}/v1/classify", json={"text": TEXT})
    httpx.post(f"{live.url}/v1/classify", json={"text": ""})
    text = httpx.get(f"{live.url}/metrics").text
    expected = [
        'llm_router_requests_total{endpoint="/v1/classify",status="200"} 2.0',
        'llm_router_requests_total{endpoint="/v1/classify",status="422"} 1.0',
        'llm_router_classifications_total{reason="none",source="llm"} 2.0',
        'llm_router_llm_tokens_total{kind="prompt"} 120.0',
        'llm_router_llm_tokens_total{kind="completion"} 6.0',
        "llm_router_llm_cost_usd_total 0.001",
        "llm_router_llm_requests_total 1.0",
        "llm_router_cache_hits_total 1.0",
        'llm_router_request_seconds_count{endpoint="/v1/classify"} 3.0',
        # No calibration profile: LLM answers carry the default 0.5.
        'llm_router_confidence_bucket{le="0.5",source="llm"} 2.0',
        'llm_router_confidence_bucket{le="0.4",source="llm"} 0.0',
    ]
    for line in expected:
        assert line in text, line


def test_past_inflight_and_queue_a_request_gets_503_and_healthz_still_answers(serve, server):
    arrived, release = threading.Event(), threading.Event()

    def held(_body):
        arrived.set()
        release.wait(60)  # in flight until the test says so: events are ordered, not timed
        return Reply.answer("math.AP")

    server.default = held
    live = serve(server_max_inflight=1, server_max_queue=0, cache=False)
    events = []

    async def scenario():
        async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:

            async def classify(i):
                reply = await client.post("/v1/classify", json={"text": f"{TEXT} {i}"})
                events.append(("classify", reply.status_code, reply.headers.get("retry-after")))

            first = asyncio.create_task(classify(0))
            await asyncio.to_thread(arrived.wait, 60)  # the first is in flight at the LLM
            await classify(1)
            reply = await client.get("/healthz")
            events.append(("healthz", reply.status_code, None))
            release.set()
            await first

    asyncio.run(scenario())
    assert events[0] == ("classify", 503, "1")  # refused at once
    assert events[1] == ("healthz", 200, None)  # while the first is still in flight
    assert events[2] == ("classify", 200, None)
    assert server.count == 1


def test_two_hundred_concurrent_clients_are_all_answered(
    serve, make_settings, trained_models, sample_rows
):
    live = serve(api_key=None)
    texts = [r["abstract"] for r in sample_rows[:200]]
    direct = Router.from_settings(make_settings(api_key=None, model_dir=trained_models))
    expected = [c.label for c in direct.classify_many(texts)]

    async def clients():
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=live.url, timeout=60, limits=limits) as client:
            replies = await asyncio.gather(
                *(client.post("/v1/classify", json={"text": t}) for t in texts)
            )
        return replies

    replies = asyncio.run(clients())
    assert [r.status_code for r in replies] == [200] * 200
    assert [r.json()["label"] for r in replies] == expected
    assert httpx.get(f"{live.url}/healthz").status_code == 200


def test_serve_without_the_extra_exits_2_with_the_install_hint():
    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "from llm_router.__main__ import main\n"
        "sys.exit(main(['serve']))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and 'pip install -e ".[serve]"' in done.stderr


# Playwright's sync API and gradio_client leave an event loop (and its self-pipe sockets) to
# the garbage collector; the leak is theirs, so only these page tests ignore it.
THIRD_PARTY_LOOP_LEAK = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning", "ignore::ResourceWarning"
)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@THIRD_PARTY_LOOP_LEAK
def test_the_page_classifies_an_abstract_in_a_real_browser(serve, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    live = serve(api_key=None, ui=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{live.url}/ui/", wait_until="domcontentloaded")
            page.locator("#classify").click()  # nothing pasted yet: a message, no traceback
            page.get_by_text("Paste an abstract first").wait_for(timeout=30_000)
            page.locator("#abstract textarea").fill(TEXT)
            page.locator("#classify").click()
            page.locator("#answer h2").wait_for(timeout=30_000)
            label = page.locator("#answer h2").inner_text()
            body = page.locator("#answer").inner_text()
            llm = page.locator("#llm").inner_text()
            page.locator("#top5-tfidf").wait_for(timeout=30_000)
            assert "Traceback" not in page.content()
        finally:
            browser.close()
    reply = httpx.post(f"{live.url}/v1/classify", json={"text": TEXT}).json()
    assert label == reply["label"] and reply["name"] in body and "tfidf" in body
    assert f"confidence: {reply['confidence']:.0%}" in body
    assert "no API key" in llm


@THIRD_PARTY_LOOP_LEAK
def test_with_a_token_the_page_asks_for_it(serve):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    live = serve(api_key=None, ui=True, server_token="page-token-123")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{live.url}/ui/", wait_until="domcontentloaded")
            page.locator("#abstract textarea").fill(TEXT)
            page.locator("#classify").click()
            page.get_by_text("Enter the server's token").wait_for(timeout=30_000)
            page.locator("input[type=password]").fill("page-token-123")
            page.locator("#classify").click()
            page.locator("#answer h2").wait_for(timeout=30_000)
            label = page.locator("#answer h2").inner_text()
        finally:
            browser.close()
    reply = httpx.post(
        f"{live.url}/v1/classify",
        json={"text": TEXT},
        headers={"Authorization": "Bearer page-token-123"},
    )
    assert label == reply.json()["label"]


def test_a_service_started_before_its_model_picks_it_up_and_readyz_follows(
    serve, trained_models, tmp_path
):
    import shutil

    root = tmp_path / "models"
    live = serve(api_key=None, model_dir=root, model_retry_s=0.1)
    assert httpx.get(f"{live.url}/readyz").status_code == 503
    text = {"text": "We prove that every planar graph is four colourable."}
    assert httpx.post(f"{live.url}/v1/classify", json=text).status_code == 503
    shutil.copytree(trained_models / "tfidf", root / "tfidf")  # the training job finishes
    for _ in range(600):  # polls for the state, in order: no time bound is asserted
        if httpx.get(f"{live.url}/readyz").status_code == 200:
            break
        time.sleep(0.05)
    assert httpx.get(f"{live.url}/readyz").json()["ready"] is True
    answer = httpx.post(f"{live.url}/v1/classify", json=text)
    assert answer.status_code == 200 and answer.json()["source"] == "tfidf"


_WATCH = """
import socket, sys
def watch(event, args):
    if event in ("socket.getaddrinfo", "socket.connect"):
        target = args[0] if event == "socket.getaddrinfo" else args[1]
        host = str(target[0] if isinstance(target, tuple) else target)
        if host not in ("127.0.0.1", "localhost", "::1", "0.0.0.0") and not host.startswith("/"):
            with open(sys.argv[1], "a") as log:
                log.write(f"{event} {host}\\n")
sys.addaudithook(watch)
from llm_router.cli import main
sys.exit(main(["serve", "--port", sys.argv[2]]))
"""


def test_the_service_never_looks_up_a_host_outside_the_machine(trained_models, tmp_path):
    """Python's audit hooks see every name look-up and connection of the server process:
    starting it and requesting the page once must touch nothing but the loopback."""
    import os
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lookups = tmp_path / "lookups.txt"
    lookups.touch()
    env = {**os.environ, "LLM_ROUTER_MODEL_DIR": str(trained_models)}
    for name in ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        env.pop(name, None)  # what the service sets itself, not the test
    server = subprocess.Popen(
        [sys.executable, "-c", _WATCH, str(lookups), str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(1200):  # waits for start-up (an order, not a time bound)
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        assert httpx.get(f"{base}/ui/", follow_redirects=True).status_code == 200
        assert httpx.get(f"{base}/ui/config", follow_redirects=True).status_code == 200
        text = {"text": "We study the spectrum of random regular graphs."}
        assert httpx.post(f"{base}/v1/classify", json=text).status_code == 200
        time.sleep(1.0)  # lets a background version check, if any, start (not a bound)
    finally:
        server.terminate()
        server.communicate(timeout=30)
    assert lookups.read_text() == ""


def test_a_bug_in_the_batcher_is_a_500_with_an_incident_logged_once(make_settings, caplog):
    from llm_router.chain import Unavailable
    from llm_router.errors import LLMUnavailable
    from llm_router.router import Router

    class Exploding:
        name = "tfidf"

        def classify(self, text):
            raise RuntimeError("a bug")

        def classify_batch(self, texts):
            raise RuntimeError("a bug")

    no_key = Unavailable(LLMUnavailable("no key", reason="no_api_key"))
    router = Router([no_key, Exploding()])
    settings = make_settings(api_key=None)
    app = create_app(settings, router=router, ui=False)
    with caplog.at_level("ERROR", logger="llm_router.service.app"), LiveServer(app) as live:
        reply = httpx.post(f"{live.url}/v1/classify", json={"text": "an abstract"})
    assert reply.status_code == 500
    error = reply.json()["error"]
    assert error["type"] == "internal" and "\n" not in error["message"]
    incident = error["message"].split("incident ")[1].split(")")[0]
    logged = [r for r in caplog.records if incident in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None


def test_metrics_count_the_spend_of_rows_that_end_in_an_error(serve, server, tmp_path):
    """Nonsense twice (the answer, then the corrective re-ask), and no local model: the row
    fails, but both paid attempts reach the counters."""
    server.default = lambda _b: Reply.answer(
        "not-a-label", prompt_tokens=100, completion_tokens=5, cost=0.002
    )
    live = serve(model_dir=tmp_path / "no-models")
    reply = httpx.post(f"{live.url}/v1/classify", json={"text": TEXT})
    assert reply.status_code == 503 and server.count == 2
    text = httpx.get(f"{live.url}/metrics").text
    for line in (
        "llm_router_llm_requests_total 2.0",
        'llm_router_llm_tokens_total{kind="prompt"} 200.0',
        'llm_router_llm_tokens_total{kind="completion"} 10.0',
        "llm_router_llm_cost_usd_total 0.004",
    ):
        assert line in text, line


@pytest.mark.parametrize(
    "body",
    [
        b'{"text": "caf\xe9 \xff"}',  # not UTF-8
        b"[" * 50_000 + b"]" * 50_000,  # nested too deep
        b'{"text": ' + b"9" * 5_000 + b"}",  # a number too long to parse
    ],
    ids=["invalid-utf8", "nested-50000", "5000-digits"],
)
def test_a_body_that_cannot_be_parsed_gets_the_documented_422(serve, server, body):
    live = serve()
    reply = httpx.post(
        f"{live.url}/v1/classify", content=body, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["type"] == "invalid_input" and "\n" not in error["message"]
    assert server.count == 0


def test_a_batch_stays_within_the_inflight_limit(serve, server):
    lock = threading.Lock()
    active = [0, 0]  # now, peak

    def slow(_body):
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        time.sleep(0.2)  # holds the request open so that overlaps show (not a time bound)
        with lock:
            active[0] -= 1
        return Reply.answer("math.AP")

    server.default = slow
    live = serve(server_max_inflight=2, cache=False)
    texts = [f"{TEXT} ({i})" for i in range(6)]
    reply = httpx.post(f"{live.url}/v1/classify/batch", json={"texts": texts}, timeout=60)
    assert reply.status_code == 200
    assert [r["label"] for r in reply.json()["results"]] == ["math.AP"] * 6
    assert 1 <= active[1] <= 2


@THIRD_PARTY_LOOP_LEAK
def test_the_page_is_under_the_services_admission_control(serve, server):
    gradio_client = pytest.importorskip("gradio_client")
    release = threading.Event()

    def held(_body):
        release.wait(60)  # the /v1 request stays in flight until released
        return Reply.answer("math.AP")

    server.default = held
    live = serve(ui=True, server_max_inflight=1, server_max_queue=0, cache=False)
    busy_request = threading.Thread(
        target=lambda: httpx.post(f"{live.url}/v1/classify", json={"text": TEXT}, timeout=60)
    )
    busy_request.start()
    try:
        assert server.wait_for(1, stop=lambda: not busy_request.is_alive())  # it holds the slot
        client = gradio_client.Client(f"{live.url}/ui/", verbose=False)
        answer = client.predict(TEXT, "", api_name="/run")
        assert answer[0].startswith("⚠️ The service is busy")
    finally:
        release.set()
        busy_request.join(60)
    server.default = lambda _body: Reply.answer("math.AP")
    answer = client.predict(TEXT, "", api_name="/run")
    assert answer[0].startswith("## math.AP")


def test_the_page_shows_the_llm_answer_beside_the_local_top_5_and_whom_it_followed():
    from llm_router.schemas import Candidate, Classification, LLMAnswer
    from llm_router.service.page import _answer_markdown, _llm_markdown
    from llm_router.settings import Settings

    local = [Candidate(label=c, score=s) for c, s in [("hep-th", 0.6), ("hep-ph", 0.2)]]
    result = Classification(
        label="hep-th",
        confidence=0.71,
        source="llm",
        model="some-model",
        candidates=[Candidate(label="hep-th", score=0.71)],
        llm_answer=LLMAnswer(label="hep-ph", logprob=-2.0, confidence=0.4),
        local_candidates=local,
        followed="local",
    )
    shown = _llm_markdown(result, Settings(api_key="k"))
    assert "`hep-ph`" in shown and "40%" in shown  # the LLM's answer and its own reliability
    assert "`hep-th` 60%" in shown and "`hep-ph` 20%" in shown  # the local top 5
    assert "local model" in shown.split("Combined:")[1]  # whom the combination followed
    assert "confidence: **71%**" in _answer_markdown(result)
