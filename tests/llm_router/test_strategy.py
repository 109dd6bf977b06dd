"""Strategies against the scripted server: what the LLM is offered, and when it is asked."""

from __future__ import annotations

import json

import pytest

from llm_router import LLMResponseInvalid, Router
from llm_router.chain import build_chain
from llm_router.labels import LabelSet
from llm_router.router import llm_classifier
from llm_router.strategy import StrategyClassifier
from llm_router.testing import Reply
from tests.llm_router.helpers import MissingClassifier, RankedClassifier

TEXT = "We compute one-loop amplitudes in N=4 super Yang-Mills theory using unitarity cuts."
LABELS = LabelSet.full_taxonomy()
# Ten labels, best first; the top one at 0.6.
RANKING = {
    "hep-th": 0.60,
    "hep-ph": 0.15,
    "gr-qc": 0.08,
    "math-ph": 0.05,
    "quant-ph": 0.04,
    "cond-mat.str-el": 0.03,
    "astro-ph.CO": 0.02,
    "nucl-th": 0.015,
    "math.AG": 0.01,
    "hep-lat": 0.005,
}


def router_for(settings, strategy, local, k=8, threshold=0.85):
    head = StrategyClassifier(
        llm_classifier(settings, LABELS), local, strategy=strategy, k=k, threshold=threshold
    )
    return Router([head, *local], strategy=strategy)


def enum_of(body):
    return body["response_format"]["json_schema"]["schema"]["properties"]["label"]["enum"]


def offered_lines(body):
    system = body["messages"][0]["content"]
    codes = {*LABELS.labels}
    return [line.split(" — ")[0] for line in system.splitlines() if line.split(" — ")[0] in codes]


def test_shortlist_offers_exactly_the_local_models_top_k(make_settings, server):
    server.script(Reply.answer("hep-ph"))
    local = RankedClassifier(RANKING)
    result = router_for(make_settings(), "shortlist", [local], k=4).classify(TEXT)
    top4 = ["hep-th", "hep-ph", "gr-qc", "math-ph"]
    body = server.requests[0].body
    assert enum_of(body) == top4  # strict by default: no way out of the shortlist
    assert offered_lines(body) == top4
    assert (result.label, result.source, result.strategy) == ("hep-ph", "llm", "shortlist")
    assert result.decision == "llm_shortlist" and result.shortlist == top4
    assert result.prompt_version == "shortlist-strict/v1" and server.count == 1


def test_llm_strategy_offers_the_full_list(make_settings, server):
    server.script(Reply.answer("hep-th"))
    result = router_for(make_settings(), "llm", [RankedClassifier(RANKING)]).classify(TEXT)
    assert len(enum_of(server.requests[0].body)) == len(LABELS)
    assert (result.decision, result.strategy, result.shortlist) == ("llm", "llm", None)


def test_none_of_these_widens_to_the_full_list_once(make_settings, server):
    server.script(
        Reply.answer("none", prompt_tokens=300), Reply.answer("math.AG", prompt_tokens=1200)
    )
    settings = make_settings(shortlist_widen=True)
    result = router_for(settings, "shortlist", [RankedClassifier(RANKING)], k=3).classify(TEXT)
    first, second = (r.body for r in server.requests)
    assert enum_of(first) == ["hep-th", "hep-ph", "gr-qc", "none"]
    assert len(enum_of(second)) == len(LABELS) and "none" not in enum_of(second)
    assert (result.label, result.decision, result.prompt_version) == (
        "math.AG",
        "llm_widened",
        "classify/v1",
    )
    assert result.usage.requests == 2 and result.usage.prompt_tokens == 1500


def test_an_answer_outside_the_shortlist_is_re_asked_then_refused(make_settings, server):
    server.script(Reply.answer("cs.CV", raw=True), Reply.answer("cs.CV", raw=True))
    local = RankedClassifier(RANKING)
    result = router_for(make_settings(), "shortlist", [local], k=3).classify(TEXT)
    assert server.count == 2
    assert (result.source, result.fallback_reason, result.decision) == (
        "tfidf",
        "invalid_label",
        "fallback",
    )
    assert result.strategy == "shortlist"


def test_cascade_answers_a_confident_row_locally_and_sends_nothing(make_settings, server):
    local = RankedClassifier(RANKING)
    result = router_for(make_settings(), "cascade", [local], threshold=0.6).classify(TEXT)
    assert server.count == 0
    assert (result.label, result.source, result.decision, result.strategy) == (
        "hep-th",
        "tfidf",
        "local_confident",
        "cascade",
    )
    assert result.usage is None and result.fallback_reason is None


def test_cascade_asks_the_llm_with_the_shortlist_when_unsure(make_settings, server):
    server.script(Reply.answer("gr-qc"))
    local = RankedClassifier(RANKING)
    result = router_for(make_settings(), "cascade", [local], k=5, threshold=0.61).classify(TEXT)
    assert server.count == 1 and len(enum_of(server.requests[0].body)) == 5
    assert (result.label, result.source, result.decision) == ("gr-qc", "llm", "llm_shortlist")


def test_cascade_still_falls_back_when_the_llm_fails(make_settings, server):
    server.default = lambda _b: Reply.error(503)
    local = RankedClassifier(RANKING)
    router = router_for(make_settings(max_attempts=2), "cascade", [local], threshold=0.9)
    result = router.classify(TEXT)
    assert server.count == 2
    assert (result.source, result.fallback_reason, result.decision) == (
        "tfidf",
        "http_503",
        "fallback",
    )


@pytest.mark.parametrize("strategy", ["shortlist", "cascade"])
def test_without_a_local_model_the_full_list_is_sent_and_said(make_settings, server, strategy):
    server.script(Reply.answer("hep-th"))
    result = router_for(make_settings(), strategy, [MissingClassifier("tfidf")]).classify(TEXT)
    assert len(enum_of(server.requests[0].body)) == len(LABELS)
    assert (result.decision, result.strategy, result.shortlist) == (
        "llm_no_shortlist",
        strategy,
        None,
    )


def test_the_shortlist_comes_from_the_first_local_model_that_answers(make_settings, server):
    server.script(Reply.answer("quant-ph"))
    second = RankedClassifier({"quant-ph": 0.5, "cs.IT": 0.3, "math.OC": 0.2}, name="tfidf")
    router_for(make_settings(), "shortlist", [MissingClassifier("bert"), second]).classify(TEXT)
    assert enum_of(server.requests[0].body) == ["quant-ph", "cs.IT", "math.OC"]


def test_strategies_share_a_cached_answer_only_for_the_same_request(make_settings, server):
    server.default = lambda body: Reply.answer(enum_of(body)[0])
    settings = make_settings()
    local = [RankedClassifier(RANKING)]
    llm = llm_classifier(settings, LABELS)

    def head(strategy, k=8):
        return StrategyClassifier(llm, local, strategy=strategy, k=k, threshold=0.99)

    head("llm").classify(TEXT)
    head("shortlist").classify(TEXT)  # another request: not the full list's answer
    assert server.count == 2
    again = head("cascade").classify(TEXT)  # the same shortlist question as above
    assert server.count == 2 and again.cached and again.decision == "llm_shortlist"
    head("shortlist", k=3).classify(TEXT)  # a different shortlist is a different request
    assert server.count == 3


def test_strategy_k_and_threshold_come_from_the_environment(
    monkeypatch, make_settings, server, trained_models
):
    monkeypatch.setenv("LLM_ROUTER_STRATEGY", "cascade")
    monkeypatch.setenv("LLM_ROUTER_SHORTLIST_K", "3")
    monkeypatch.setenv("LLM_ROUTER_CASCADE_THRESHOLD", "1.0")  # never sure enough
    settings = make_settings(model_dir=trained_models)
    assert (settings.strategy, settings.shortlist_k, settings.cascade_threshold) == (
        "cascade",
        3,
        1.0,
    )
    server.default = lambda body: Reply.answer(enum_of(body)[1])  # the local model's second
    router = Router.from_settings(settings)
    result = router.classify(TEXT)
    body = server.requests[0].body
    assert len(enum_of(body)) == 3
    local = build_chain(settings).local["tfidf"].classify(TEXT)
    assert result.shortlist == [c.label for c in local.candidates[:3]]
    assert result.label == local.candidates[1].label and result.decision == "llm_shortlist"
    router.close()


def test_an_unknown_strategy_is_a_one_line_config_error(monkeypatch, make_settings):
    from llm_router import ConfigError

    monkeypatch.setenv("LLM_ROUTER_STRATEGY", "frugal")
    with pytest.raises(ConfigError, match="LLM_ROUTER_STRATEGY"):
        make_settings()


def test_the_shortlist_prompt_names_every_offered_label(make_settings, server):
    server.script(Reply.answer("hep-th"))
    settings = make_settings(shortlist_widen=True)
    router_for(settings, "shortlist", [RankedClassifier(RANKING)], k=2).classify(TEXT)
    system = server.requests[0].body["messages"][0]["content"]
    assert "hep-th — High Energy Physics - Theory" in system
    assert "hep-ph — High Energy Physics - Phenomenology" in system
    assert '{"label": "none"}' in system and "gr-qc" not in system
    assert json.dumps(server.requests[0].body).count("cs.CV") == 0


def test_without_widening_the_shortlist_is_strict(make_settings, server, monkeypatch):
    server.script(Reply.answer("gr-qc"))
    monkeypatch.setenv("LLM_ROUTER_SHORTLIST_WIDEN", "false")
    settings = make_settings()
    result = router_for(settings, "shortlist", [RankedClassifier(RANKING)], k=3).classify(TEXT)
    body = server.requests[0].body
    assert enum_of(body) == ["hep-th", "hep-ph", "gr-qc"]
    assert '"none"' not in body["messages"][0]["content"]
    assert (result.label, result.prompt_version) == ("gr-qc", "shortlist-strict/v1")


def test_an_answer_is_normalised_in_the_whole_label_space_before_the_shortlist_check(
    make_settings, server
):
    # math.AG is a deployed label: it must not be read as the shortlisted archive "math"
    labels = LabelSet(("math", "math.AG", "math.CO", "hep-th"), {"math.GM": "math"})
    server.script(Reply.answer("math.AG", raw=True), Reply.answer("math.AG", raw=True))
    settings = make_settings(structured_output="none")
    from llm_router.llm.client import LLMClassifier
    from llm_router.prompts import load_prompt

    llm = LLMClassifier(settings, labels, load_prompt("classify/v1"))
    with pytest.raises(LLMResponseInvalid):
        llm.classify(TEXT, shortlist=["math", "math.CO"])
    server.script(Reply.answer("math.GM", raw=True))  # a merged code: it is the label "math"
    assert llm.classify(TEXT, shortlist=["math", "math.CO"]).label == "math"
