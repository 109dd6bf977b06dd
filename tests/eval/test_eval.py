"""python -m eval end to end: budget, rate limit, cache, estimate, report, exit codes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval.__main__ import main
from llm_router.testing import Reply
from tests.conftest import TEST_KEY, interrupt_after


@pytest.fixture
def env(monkeypatch, tmp_path, trained_models, server):
    """Environment for a run against the scripted server with the session's TF-IDF model."""
    monkeypatch.setenv("LLM_ROUTER_MODEL_DIR", str(trained_models))
    monkeypatch.setenv("LLM_ROUTER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LLM_ROUTER_BASE_URL", server.url)
    monkeypatch.setenv("LLM_ROUTER_RETRY_MAX_WAIT_S", "0")
    monkeypatch.setenv("LLM_ROUTER_FALLBACKS", "bert,tfidf")
    return monkeypatch


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_offline_without_a_key_runs_from_the_local_models(env, server, tmp_path, sample_file):
    out = tmp_path / "run"
    assert main(["--n", "10", "--data", str(sample_file), "--out", str(out)]) == 0
    report = read_report(out)
    assert report["systems"]["llm"]["unavailable"].startswith("no_api_key")
    assert report["systems"]["bert"]["unavailable"].startswith("missing_artifacts")
    router = report["systems"]["router"]
    assert router["rows"] == 10 and router["sources"] == {"tfidf": 10}
    assert router["reasons"] == {"no_api_key": 10}
    assert report["systems"]["tfidf"]["top5"] is not None
    assert server.count == 0
    assert {p.name for p in out.iterdir()} == {
        "report.json",
        "report.md",
        "predictions.csv",
        "confusion.png",
    }


def test_data_defaults_to_what_the_models_were_trained_on(env, tmp_path):
    out = tmp_path / "run"
    assert main(["--n", "3", "--systems", "tfidf", "--out", str(out)]) == 0
    assert read_report(out)["rows"] == 3


def test_samples_only_held_out_rows(env, tmp_path, sample_file, trained_models):
    out = tmp_path / "run"
    main(["--n", "40", "--systems", "tfidf", "--data", str(sample_file), "--out", str(out)])
    manifest = json.loads((trained_models / "tfidf" / "manifest.json").read_text())
    held_out = set(manifest["split"]["test_ids"])
    ids = {p["row_id"] for p in read_report(out)["predictions"]}
    assert len(ids) == 40 and ids <= held_out


def test_accuracy_equals_what_the_predictions_say(env, server, tmp_path, sample_file):
    env.setenv("OPENROUTER_API_KEY", TEST_KEY)
    server.default = lambda body: Reply.answer(
        "cs.LG" if len(body["messages"][1]["content"]) % 2 else "math.CO"
    )
    out = tmp_path / "run"
    main(["--n", "12", "--data", str(sample_file), "--rpm", "6000", "--out", str(out)])
    report = read_report(out)
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for name, figures in report["systems"].items():
        if "unavailable" in figures:
            continue
        mine = [r for r in rows if r["system"] == name]
        assert len(mine) == figures["rows"] == 12
        assert figures["accuracy"] == pytest.approx(
            sum(r["label"] == r["truth"] for r in mine) / 12
        )


@pytest.mark.parametrize("concurrency", ["1", "8"])
def test_requests_never_exceed_max_requests(env, server, tmp_path, sample_file, concurrency):
    env.setenv("OPENROUTER_API_KEY", TEST_KEY)
    server.default = lambda _body: Reply.answer("cs.LG", delay_s=0.05)
    out = tmp_path / "run"
    code = main(
        [
            "--n",
            "20",
            "--data",
            str(sample_file),
            "--systems",
            "router,llm",
            "--rpm",
            "60000",
            "--max-requests",
            "5",
            "--concurrency",
            concurrency,
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert server.count == 5
    report = read_report(out)
    assert report["budget"]["requests"] == 5
    router = report["systems"]["router"]
    assert router["reasons"].get("budget", 0) == 15  # 5 answered by the cache, 15 fell back
    assert router["sources"] == {"llm": 5, "tfidf": 15}


def test_rpm_spaces_requests(env, server, tmp_path, sample_file):
    env.setenv("OPENROUTER_API_KEY", TEST_KEY)
    out = tmp_path / "run"
    main(
        [
            "--n",
            "5",
            "--data",
            str(sample_file),
            "--systems",
            "llm",
            "--rpm",
            "300",
            "--concurrency",
            "5",
            "--out",
            str(out),
        ]
    )
    times = sorted(r.at for r in server.requests)
    assert len(times) == 5
    # 60/300 = 0.2 s apart. The server records arrival times in this same process, where a
    # GC pause can delay one record by a tenth of a second, so the whole span is checked.
    assert times[-1] - times[0] >= 4 * 0.2 * 0.9


def test_a_rerun_with_the_same_cache_sends_nothing(env, server, tmp_path, sample_file):
    env.setenv("OPENROUTER_API_KEY", TEST_KEY)
    args = ["--n", "6", "--data", str(sample_file), "--systems", "router,llm", "--rpm", "6000"]
    main([*args, "--out", str(tmp_path / "one")])
    sent = server.count
    main([*args, "--out", str(tmp_path / "two")])
    assert sent == 6 and server.count == sent
    again = read_report(tmp_path / "two")["systems"]["llm"]
    assert again["cache_hits"] == 6 and again["requests"] == 0 and again["cost_usd"] == 0


def test_estimate_sends_nothing(env, server, tmp_path, sample_file, capsys):
    env.setenv("OPENROUTER_API_KEY", TEST_KEY)
    base = ["--n", "10", "--data", str(sample_file), "--estimate", "--price-per-mtok", "0.2"]
    assert main([*base, "--systems", "router,llm,tfidf"]) == 0
    printed = capsys.readouterr().out
    assert "requests: 10" in printed and "cost_usd:" in printed  # the router's are cache hits
    assert main(base) == 0  # shortlist and cascade ask questions of their own
    assert "requests: 30" in capsys.readouterr().out
    assert server.count == 0


def test_a_429_slows_the_run_down_rather_than_failing_it(env, server, tmp_path, sample_file):
    env.setenv("OPENROUTER_API_KEY", TEST_KEY)
    server.script(Reply.error(429, **{"Retry-After": "1"}))
    out = tmp_path / "run"
    assert (
        main(
            [
                "--n",
                "3",
                "--data",
                str(sample_file),
                "--systems",
                "llm",
                "--rpm",
                "6000",
                "--concurrency",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert read_report(out)["systems"]["llm"]["answered"] == 3


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--n", "0"], "--n must be at least 1"),
        (["--systems", "router,gpt5"], "unknown system"),
        (["--data", "/nonexistent/file.csv"], "not found"),
        (["--data", "/nonexistent"], "not found"),
        (["--data", "./data/abstracts"], "not found"),
        (["--price-per-mtok", "cheap"], "--price-per-mtok"),
        (["--n", "ten"], "invalid int"),
        (["--rpm", "0"], "--rpm"),
    ],
)
def test_bad_arguments_exit_2_without_a_traceback(env, args, words):
    result = subprocess.run(
        [sys.executable, "-m", "eval", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_no_trained_model_says_how_to_train_one(env, tmp_path, capsys):
    env.setenv("LLM_ROUTER_MODEL_DIR", str(tmp_path / "empty"))
    assert main(["--n", "5"]) == 2
    assert "python -m fallback_models train tfidf" in capsys.readouterr().err


def test_the_key_appears_in_no_report_file(env, server, tmp_path, sample_file):
    env.setenv("OPENROUTER_API_KEY", TEST_KEY)
    out = tmp_path / "run"
    main(["--n", "4", "--data", str(sample_file), "--rpm", "6000", "--out", str(out)])
    for path in out.iterdir():
        assert TEST_KEY.encode() not in path.read_bytes()
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            assert TEST_KEY.encode() not in path.read_bytes()


def test_ctrl_c_writes_the_partial_report_and_a_rerun_resumes(env, server, tmp_path, sample_file):
    env.setenv("OPENROUTER_API_KEY", TEST_KEY)
    server.default = lambda _body: Reply.answer("cs.LG", delay_s=0.3)
    out = tmp_path / "run"
    args = [
        "--n",
        "30",
        "--data",
        str(sample_file),
        "--systems",
        "llm",
        "--rpm",
        "6000",
        "--concurrency",
        "1",
    ]
    code, stderr = interrupt_after(["eval", *args, "--out", str(out)], server, 3)
    assert code == 130, stderr
    assert "Traceback" not in stderr
    report = read_report(out)
    done = report["systems"]["llm"]["rows"]
    assert report["status"] == "interrupted" and 3 <= done < 30
    sent = server.count
    assert main([*args, "--out", str(tmp_path / "again")]) == 0
    again = read_report(tmp_path / "again")["systems"]["llm"]
    assert again["rows"] == 30 and again["cache_hits"] >= done
    assert server.count - sent == 30 - again["cache_hits"]


def test_a_model_list_without_prices_gives_no_price(server):
    from eval.pricing import fetch_price
    from llm_router import Settings

    # The scripted server lists its model without pricing, as llama.cpp's server does.
    settings = Settings(api_key="k", base_url=server.url, model="scripted-model")
    assert fetch_price(settings) is None


def test_a_bad_environment_value_exits_2_with_one_line(env):
    env.setenv("LLM_ROUTER_TIMEOUT_S", "abc")
    for module in ("eval", "fallback_models"):
        args = ["--n", "3"] if module == "eval" else ["train", "tfidf", "--data", "x.jsonl"]
        result = subprocess.run(
            [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and "LLM_ROUTER_TIMEOUT_S" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_an_unanswerable_row_is_counted_not_fatal(env, tmp_path, sample_file):
    env.setenv("LLM_ROUTER_FALLBACKS", "bert")  # no key, and no BERT model trained
    out = tmp_path / "run"
    assert main(["--n", "5", "--data", str(sample_file), "--out", str(out)]) == 0
    router = read_report(out)["systems"]["router"]
    assert router["answered"] == 0 and router["reasons"] == {"no_api_key": 5}
    assert read_report(out)["systems"]["tfidf"]["answered"] == 5


def test_a_dead_endpoint_costs_a_few_requests_and_is_named(env, tmp_path, sample_file):
    from llm_router.testing import ChatServer

    dead = ChatServer().start()
    url = dead.url
    dead.stop()  # nothing listens there any more: connections are refused
    env.setenv("LLM_ROUTER_BASE_URL", url)
    env.setenv("OPENROUTER_API_KEY", TEST_KEY)
    out = tmp_path / "run"
    args = ["--n", "10", "--data", str(sample_file), "--rpm", "600", "--out", str(out)]
    assert main(args) == 0
    report = read_report(out)
    assert report["budget"]["requests"] <= 6  # the breaker opened after 5 failed attempts
    assert report["llm_link"]["breaker_cause"] == "connection_error"
    assert "connection_error" in report["systems"]["llm"]["reasons"]
    assert "budget" not in report["systems"]["router"]["reasons"]
    assert "after connection_error" in (out / "report.md").read_text()


def test_usd_cap_holds_in_eval_at_concurrency_8(env, server, tmp_path, sample_file):
    env.setenv("OPENROUTER_API_KEY", TEST_KEY)
    server.default = lambda _body: Reply.answer("cs.LG", cost=0.004, delay_s=0.05)
    out = tmp_path / "run"
    args = ["--n", "20", "--data", str(sample_file), "--rpm", "60000", "--concurrency", "8"]
    assert main([*args, "--max-cost-usd", "0.01", "--out", str(out)]) == 0
    report = read_report(out)
    assert server.count == 2 and report["budget"]["cost_usd"] <= 0.01


def test_credentials_in_the_base_url_stay_out_of_reports(env, server, tmp_path, sample_file):
    env.setenv("OPENROUTER_API_KEY", TEST_KEY)
    env.setenv("LLM_ROUTER_BASE_URL", server.url.replace("http://", "http://bob:hunter2@"))
    out = tmp_path / "run"
    main(["--n", "3", "--data", str(sample_file), "--rpm", "6000", "--out", str(out)])
    assert read_report(out)["systems"]["llm"]["answered"] == 3
    for path in out.iterdir():
        assert b"hunter2" not in path.read_bytes()


def test_strategy_figures_match_a_hand_counted_case():
    from eval.report import system_figures
    from eval.systems import RowResult

    def row(
        truth,
        label,
        *,
        requests=0,
        tokens=0,
        cost=0.0,
        cached=False,
        source="llm",
        shortlist=None,
        decision=None,
        listed=(),
    ):
        return RowResult(
            row_id=truth + label,
            truth=truth,
            label=label,
            source=source,
            cached=cached,
            reason=None,
            latency_ms=1.0,
            prompt_tokens=tokens,
            completion_tokens=requests * 5,
            cost_usd=cost,
            requests=requests,
            decision=decision,
            shortlist=shortlist,
            listed=frozenset({truth, *listed}),
        )

    outcomes = [
        # decided locally: nothing sent
        row("cs.CV", "cs.CV", source="tfidf", decision="local_confident"),
        row("hep-th", "hep-ph", source="tfidf", decision="local_confident", listed=["hep-ph"]),
        # sent with a shortlist holding the truth; right
        row(
            "math.AP",
            "math.AP",
            requests=1,
            tokens=400,
            cost=0.002,
            shortlist=["math.AP", "math.CA"],
            decision="llm_shortlist",
        ),
        # sent, the truth not in the shortlist; wrong label, same group
        row(
            "math.GT",
            "math.AT",
            requests=1,
            tokens=400,
            cost=0.002,
            shortlist=["math.AT", "math.GN"],
            decision="llm_shortlist",
        ),
        # answered from the cache: reached the LLM, cost nothing here
        row(
            "cs.LG",
            "stat.ML",
            cached=True,
            shortlist=["stat.ML", "cs.LG"],
            decision="llm_shortlist",
        ),
    ]
    f = system_figures(outcomes, {"requests": 2, "tokens": 810, "cost_usd": 0.004})
    assert f["accuracy"] == 2 / 5
    assert f["group_accuracy"] == 4 / 5  # hep-th/hep-ph are Physics, math.GT/AT Mathematics
    assert f["listed_accuracy"] == 3 / 5  # hep-ph is one of the paper's listed categories
    assert f["llm_share"] == 3 / 5
    assert f["llm_rows_sent"] == 2
    # the two sent rows averaged 400 prompt tokens and $0.002; three of five rows reach the LLM
    assert f["prompt_tokens_per_row"] == pytest.approx(3 / 5 * 400)
    assert f["completion_tokens_per_row"] == pytest.approx(3 / 5 * 5)
    assert f["cost_usd_per_1k_rows"] == pytest.approx(1000 * 3 / 5 * 0.002)
    assert f["shortlist_recall"] == 2 / 3
    assert f["decisions"] == {"local_confident": 2, "llm_shortlist": 3}


def test_every_strategy_is_a_system_on_the_same_rows(env, server, tmp_path, sample_file):
    env.setenv("OPENROUTER_API_KEY", TEST_KEY)
    env.setenv("LLM_ROUTER_CASCADE_THRESHOLD", "0.5")
    server.default = lambda body: Reply.answer(
        body["response_format"]["json_schema"]["schema"]["properties"]["label"]["enum"][0]
    )
    out = tmp_path / "run"
    args = ["--n", "12", "--data", str(sample_file), "--out", str(out), "--rpm", "6000"]
    assert main([*args, "--systems", "llm,shortlist,cascade,tfidf"]) == 0
    systems = read_report(out)["systems"]
    full, short, cascade, tfidf = (systems[s] for s in ("llm", "shortlist", "cascade", "tfidf"))
    assert full["rows"] == short["rows"] == cascade["rows"] == tfidf["rows"] == 12
    assert full["decisions"] == {"llm": 12} and short["decisions"] == {"llm_shortlist": 12}
    # the shortlist's first label is the local top-1: the LLM that picks it agrees with tfidf
    assert short["accuracy"] == tfidf["accuracy"]
    assert short["shortlist_rows"] == 12 and short["shortlist_recall"] >= tfidf["accuracy"]
    assert short["prompt_tokens_per_row"] == 100 and full["llm_share"] == 1.0
    local = cascade["decisions"].get("local_confident", 0)
    assert 0 < local < 12, cascade["decisions"]
    assert cascade["llm_share"] == pytest.approx((12 - local) / 12)
    # cascade rows that reached the LLM asked the shortlist's question: cache hits, not paid
    assert cascade["requests"] == 0 and cascade["cache_hits"] == 12 - local
    sent = [
        r
        for r in server.requests
        if len(r.body["response_format"]["json_schema"]["schema"]["properties"]["label"]["enum"])
        == 8
    ]
    assert len(sent) == 12 and server.count == 24


def test_a_row_that_fails_after_paid_attempts_counts_in_every_figure():
    from eval.report import llm_economics
    from eval.sampling import Row
    from eval.systems import RowResult
    from fallback_models.data import Paper
    from llm_router.errors import AllClassifiersFailed, LLMResponseInvalid, spent_by
    from llm_router.schemas import Usage

    nonsense = LLMResponseInvalid("not a label, twice")
    nonsense.usage = Usage(prompt_tokens=200, completion_tokens=10, cost_usd=0.0021, requests=2)
    failure = AllClassifiersFailed([nonsense])
    row = Row(Paper("1", "an abstract", "cs.CV"), "cs.CV", frozenset({"cs.CV"}))
    result = RowResult.failed(row, "invalid_label", 1.0, spent_by(failure))
    figures = llm_economics([result])
    assert figures["completion_tokens_per_row"] == 10
    assert figures["cost_usd_per_1k_rows"] == pytest.approx(2.1)
    assert figures["prompt_tokens_per_row"] == 200
