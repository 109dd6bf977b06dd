"""The LLM as a calibrated voter: the combination, the profiles and their matching rules, and
``confidence`` on every path (LLM, local, cascade, cached, fallback)."""

from __future__ import annotations

import json
import logging
import math

import pytest

from llm_router import Router
from llm_router.labels import LabelSet
from llm_router.router import llm_classifier
from llm_router.schemas import DEFAULT_LLM_CONFIDENCE, Candidate
from llm_router.strategy import StrategyClassifier
from llm_router.testing import ChatServer, Reply, ScriptedModel, Truth
from llm_router.voter import (
    PROFILE_FORMAT,
    Calibration,
    Profile,
    ProfileKey,
    VoterParams,
    followed,
    read_profile,
    write_profile,
)
from tests.llm_router.helpers import RankedClassifier

TEXT = "We compute one-loop amplitudes in N=4 super Yang-Mills theory using unitarity cuts."
LABELS = LabelSet.full_taxonomy()
N = len(LABELS.labels)
RANKING = {"hep-th": 0.60, "hep-ph": 0.15, "gr-qc": 0.08, "math-ph": 0.05, "quant-ph": 0.04}
LOCAL = [Candidate(label=k, score=v) for k, v in RANKING.items()]
SHA = "ab" * 32


def params(bonus: float, **extra) -> VoterParams:
    return VoterParams(alpha=1.0, bonus=bonus, alone_bias=0.0, **extra)


# -- the combination -------------------------------------------------------------------------
def test_a_strong_llm_carries_the_decision_and_a_weak_one_is_overruled():
    strong = params(8.0).combine(LOCAL, N, "hep-ph", None)
    weak = params(0.5).combine(LOCAL, N, "hep-ph", None)
    assert strong[0].label == "hep-ph" and strong[0].score > 0.9
    assert weak[0].label == "hep-th"  # the local model's 0.60 outweighs a weak vote for 0.15
    assert weak[0].score < 0.60 + 1e-9  # and the doubt shows in its confidence


def test_the_posterior_is_the_local_distribution_reweighted_by_the_vote():
    bonus = 1.3
    post = {c.label: c.score for c in params(bonus).combine(LOCAL, N, "gr-qc", None)}
    rest = 1.0 - sum(RANKING.values())
    z = sum(RANKING.values()) + RANKING["gr-qc"] * (math.exp(bonus) - 1) + rest
    assert post["gr-qc"] == pytest.approx(RANKING["gr-qc"] * math.exp(bonus) / z)
    assert post["hep-th"] == pytest.approx(RANKING["hep-th"] / z)
    assert sum(post.values()) == pytest.approx(1 - rest / z)  # the rest: unlisted labels


def test_an_llm_label_the_local_model_did_not_list_gets_its_share_of_the_rest():
    post = params(20.0).combine(LOCAL, N, "cs.CV", None)
    assert post[0].label == "cs.CV"
    weak = params(0.0).combine(LOCAL, N, "cs.CV", None)
    share = (1.0 - sum(RANKING.values())) / (N - len(RANKING))
    assert {c.label: c.score for c in weak}["cs.CV"] == pytest.approx(share)


def test_log_probabilities_and_local_confidence_move_the_weight():
    p = params(3.0, bonus_logprob=2.0, mean_logprob=-1.0)
    sure = p.combine(LOCAL, N, "hep-ph", -0.01)[0]
    unsure = p.combine(LOCAL, N, "hep-ph", -3.0)[0]
    assert sure.label == "hep-ph" and unsure.label == "hep-th"
    missing = p.bonus_for("hep-ph", 0.6, None)  # a cached answer without one: the mean
    assert missing == pytest.approx(p.bonus_for("hep-ph", 0.6, -1.0))
    shy = params(4.0, bonus_local_confidence=-5.0)
    assert shy.bonus_for("hep-ph", 0.9, None) < shy.bonus_for("hep-ph", 0.2, None)


def test_followed_names_whose_answer_was_kept():
    assert followed("a", "a", "a") == "agree"
    assert followed("a", "a", "b") == "llm"
    assert followed("b", "a", "b") == "local"
    assert followed("c", "a", "b") == "neither"


# -- profiles ----------------------------------------------------------------------------------
def key(**overrides) -> ProfileKey:
    values = {
        "model": "scripted-model",
        "prompt_version": "classify/v1",
        "strategy": "llm",
        "local_kind": "tfidf",
        "local_sha256": SHA,
    }
    return ProfileKey(**{**values, **overrides})


def profile(bonus: float = 6.0, threshold: float | None = 0.7, **key_overrides) -> Profile:
    return Profile(
        key=key(**key_overrides),
        created="2026-12-07T00:00:00+00:00",
        params=VoterParams(alpha=1.0, bonus=bonus, alone_bias=1.5),
        cascade_threshold=threshold,
        rows={"fit": 200, "held_back": 100},
        figures={"combined": {"accuracy": 0.8, "ece": 0.03}},
    )


def calibration(tmp_path, **overrides) -> Calibration:
    values = {"model": "scripted-model", "prompt_version": "classify/v1", "strategy": "llm"}
    return Calibration(tmp_path, **{**values, **overrides})


def test_a_profile_round_trips_through_its_file(tmp_path):
    path = write_profile(tmp_path, profile())
    assert path.parent == tmp_path / "profiles"  # beside the model folders, not inside them
    assert read_profile(path) == profile()
    assert json.loads(path.read_text())["format"] == PROFILE_FORMAT


def test_the_matching_profile_is_used_and_said_once(tmp_path, caplog):
    write_profile(tmp_path, profile())
    found = calibration(tmp_path)
    with caplog.at_level(logging.INFO, logger="llm_router.voter"):
        assert found.profile_for("tfidf", SHA) is not None
        assert found.profile_for("tfidf", SHA) is not None
    loaded = [r for r in caplog.records if "profile loaded" in r.getMessage()]
    assert len(loaded) == 1 and "scripted-model" in loaded[0].getMessage()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "another-model"),
        ("prompt_version", "classify/v2"),
        ("strategy", "cascade"),
        ("local_kind", "bert"),
        ("local_sha256", "cd" * 32),
    ],
)
def test_a_profile_for_another_setup_is_ignored_with_a_log_line(tmp_path, caplog, field, value):
    write_profile(tmp_path, profile(**{field: value}))
    with caplog.at_level(logging.INFO, logger="llm_router.voter"):
        assert calibration(tmp_path).profile_for("tfidf", SHA) is None
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(ignored) == 1 and field in ignored[0]
    assert any("no calibration profile" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{not json", "unreadable"),
        ("[1, 2]", "not a JSON object"),
        ('{"format": 1, "key": {}}', "invalid"),
        ('{"format": 99}', "newer"),
    ],
)
def test_a_corrupt_or_newer_profile_is_ignored_with_one_line(tmp_path, caplog, content, words):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "bad.json").write_text(content)
    with caplog.at_level(logging.INFO, logger="llm_router.voter"):
        found = calibration(tmp_path)
        assert found.profile_for("tfidf", SHA) is None
        assert found.profile_for("tfidf", SHA) is None
    lines = [r.getMessage() for r in caplog.records if "bad.json" in r.getMessage()]
    assert len(lines) == 1 and words in lines[0] and "\n" not in lines[0]


def test_a_new_profile_is_picked_up_once_the_folder_changes(tmp_path):
    now = [0.0]
    found = Calibration(
        tmp_path,
        model="scripted-model",
        prompt_version="classify/v1",
        strategy="llm",
        clock=lambda: now[0],
    )
    assert found.profile_for("tfidf", SHA) is None
    write_profile(tmp_path, profile())
    assert found.profile_for("tfidf", SHA) is None  # not looked at again yet
    now[0] += found.check_s
    assert found.profile_for("tfidf", SHA) is not None


# -- confidence on every path --------------------------------------------------------------
class Local(RankedClassifier):
    """A local model with a manifest digest, as a loaded LazyClassifier has."""

    model_sha256 = SHA


def voter_router(settings, tmp_path, strategy="llm", threshold=0.85):
    llm = llm_classifier(settings, LABELS)  # cached: make_settings keeps LLM_ROUTER_CACHE on
    local = Local(RANKING)
    head = StrategyClassifier(
        llm,
        [local],
        strategy=strategy,
        threshold=threshold,
        calibration=calibration(
            tmp_path,
            strategy=strategy,
            prompt_version="classify/v1"
            if strategy == "llm"
            else "classify/v1+shortlist-strict/v1",
        ),
        n_labels=N,
        threshold_fixed=False,
    )
    return Router([head, local], strategy=strategy)


def test_without_a_profile_the_llm_wins_with_the_default_confidence(
    make_settings, server, tmp_path
):
    server.script(Reply.answer("hep-ph"))
    result = voter_router(make_settings(), tmp_path).classify(TEXT)
    assert (result.label, result.source) == ("hep-ph", "llm")
    assert result.confidence == DEFAULT_LLM_CONFIDENCE < 1.0
    assert result.candidates == [Candidate(label="hep-ph", score=DEFAULT_LLM_CONFIDENCE)]
    assert result.followed is None and result.llm_answer.label == "hep-ph"


def test_without_a_key_no_profile_is_looked_for_or_warned_of(make_settings, tmp_path, caplog):
    # The LLM is skipped (no key): the local model answers, and "no calibration profile"
    # would only be noise.
    caplog.set_level(logging.INFO, logger="llm_router")
    result = voter_router(make_settings(api_key=None), tmp_path).classify(TEXT)
    assert (result.label, result.fallback_reason) == ("hep-th", "no_api_key")
    assert not any("calibration profile" in r.getMessage() for r in caplog.records)


def test_with_a_profile_a_weak_llm_is_combined_not_obeyed(make_settings, server, tmp_path):
    write_profile(tmp_path, profile(bonus=0.5))
    server.script(Reply.answer("hep-ph"))
    result = voter_router(make_settings(), tmp_path).classify(TEXT)
    assert (result.label, result.source, result.followed) == ("hep-th", "llm", "local")
    assert result.llm_answer.label == "hep-ph"
    assert result.llm_answer.confidence == pytest.approx(1 / (1 + math.exp(-1.5)))
    assert [c.label for c in result.local_candidates] == list(RANKING)
    assert (
        result.confidence == pytest.approx(result.candidates[0].score) and result.confidence < 0.6
    )


def test_with_a_profile_a_strong_llm_decides(make_settings, server, tmp_path):
    write_profile(tmp_path, profile(bonus=8.0))
    server.script(Reply.answer("hep-ph"))
    result = voter_router(make_settings(), tmp_path).classify(TEXT)
    assert (result.label, result.followed) == ("hep-ph", "llm")
    assert 0.9 < result.confidence < 1.0


def test_a_cached_answer_gets_its_confidence_from_the_profile_in_force(
    make_settings, server, tmp_path
):
    server.script(Reply.answer("hep-ph"))
    settings = make_settings()
    first = voter_router(settings, tmp_path).classify(TEXT)
    assert first.confidence == DEFAULT_LLM_CONFIDENCE
    write_profile(tmp_path, profile(bonus=8.0))
    again = voter_router(settings, tmp_path).classify(TEXT)
    assert again.cached and server.count == 1
    assert again.label == "hep-ph" and again.confidence > 0.9


def test_cascade_uses_the_profiles_threshold_and_local_answers_keep_their_probability(
    make_settings, server, tmp_path
):
    write_profile(
        tmp_path,
        profile(
            threshold=0.55, strategy="cascade", prompt_version="classify/v1+shortlist-strict/v1"
        ),
    )
    result = voter_router(make_settings(), tmp_path, strategy="cascade", threshold=0.85).classify(
        TEXT
    )
    assert result.decision == "local_confident" and server.count == 0  # 0.60 ≥ fitted 0.55
    assert result.confidence == pytest.approx(0.60)


def test_a_fallback_answer_has_the_local_models_probability(make_settings, server, tmp_path):
    server.default = lambda _body: Reply.error(503)
    result = voter_router(make_settings(max_attempts=1), tmp_path).classify(TEXT)
    assert result.source == "tfidf" and result.decision == "fallback"
    assert result.confidence == pytest.approx(0.60)


def test_the_answers_log_probability_is_read_from_the_endpoint(make_settings, tmp_path):
    truths = {}
    model = ScriptedModel(truths, LABELS.labels, 1.0)
    with ChatServer(model) as server:
        settings = make_settings(base_url=server.url)
        result = voter_router(settings, tmp_path).classify(TEXT)
        assert server.requests[0].body["logprobs"] is True
    assert result.llm_answer.logprob is not None and result.llm_answer.logprob <= 0
    without = voter_router(make_settings(logprobs=False), tmp_path)
    assert without.classify(TEXT + " again").llm_answer.logprob is None


def test_the_scripted_model_is_right_as_often_as_it_is_told():
    labels = ["hep-th", "hep-ph", "gr-qc", "cs.CV", "cs.LG"]
    texts = [f"paper number {i} about things" for i in range(400)]
    from llm_router.testing import paper_key

    truths = {paper_key(t): Truth("hep-th", ("hep-ph",)) for t in texts}
    model = ScriptedModel(truths, labels, 0.45, seed=3)
    answers = [model.answer(t, labels)[0] for t in texts]
    right = sum(a == "hep-th" for a in answers) / len(answers)
    assert 0.38 < right < 0.52
    assert {a for a in answers if a != "hep-th"} == {"hep-ph"}  # mistakes: the cross-listing
    assert answers == [model.answer(t, labels)[0] for t in texts]  # deterministic


# -- log-probabilities from a hostile endpoint ----------------------------------------------
def with_logprobs(content: dict | str) -> Reply:
    reply = Reply.answer("hep-ph")
    reply.body["choices"][0]["logprobs"] = content
    return reply


@pytest.mark.parametrize(
    "logprobs",
    [
        "garbage",
        {"content": "not a list"},
        {"content": [{"token": "x"}]},
        {"content": [{"token": '{"label": "hep-ph"}', "logprob": float("nan")}]},
        {"content": [{"token": '{"label": "hep-ph"}', "logprob": 3.0}]},  # above 0
        {"content": []},
    ],
)
def test_malformed_log_probabilities_are_ignored_not_fatal(make_settings, server, logprobs):
    server.script(with_logprobs(logprobs))
    result = llm_classifier(make_settings(cache=False), LABELS).classify(TEXT)
    assert result.label == "hep-ph" and result.llm_answer.logprob is None


def test_only_the_labels_tokens_count(make_settings, server):
    tokens = [
        ('{"', -2.0),
        ("label", -0.5),
        ('": "', -0.1),
        ("hep", -0.3),
        ("-ph", -0.2),
        ('"}', -4),
    ]
    server.script(with_logprobs({"content": [{"token": t, "logprob": lp} for t, lp in tokens]}))
    result = llm_classifier(make_settings(cache=False), LABELS).classify(TEXT)
    assert result.llm_answer.logprob == pytest.approx(-0.5)
    odd = [("something", -1.0), ("else", -2.0)]  # tokens that do not spell the answer: all
    server.script(with_logprobs({"content": [{"token": t, "logprob": lp} for t, lp in odd]}))
    result = llm_classifier(make_settings(cache=False), LABELS).classify(TEXT + " 2")
    assert result.llm_answer.logprob == pytest.approx(-3.0)
