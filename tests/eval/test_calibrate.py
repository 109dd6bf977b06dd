"""python -m eval --calibrate: measure a scripted endpoint of known quality, fit, write the
profile, and the router then combines with it."""

from __future__ import annotations

import json
import random

import pytest

from eval.__main__ import main
from eval.calibrate import Observation, cascade_threshold, figures, fit, folds, out_of_fold
from eval.sampling import stratified_sample
from fallback_models import artifacts
from fallback_models.data import load_papers
from llm_router import Router, Settings
from llm_router.schemas import Candidate
from llm_router.testing import ChatServer, ScriptedModel, Truth, paper_key
from llm_router.voter import read_profile

LABELS = ["a.X", "a.Y", "b.X", "b.Y", "c.X"]


@pytest.fixture
def model_root(tmp_path, trained_models):
    """A private model root (the session's TF-IDF model, linked): profiles land here."""
    root = tmp_path / "models"
    root.mkdir()
    (root / "tfidf").symlink_to(trained_models / "tfidf")
    return root


def scripted(model_root, sample_file, accuracy):
    labels = artifacts.deployed_label_set(model_root, ["tfidf"])
    held = artifacts.test_ids(model_root, ["tfidf"])["tfidf"]
    rows = stratified_sample(load_papers(str(sample_file)), held, labels, len(held), 0)
    truths = {paper_key(r.paper.text): Truth(r.truth, tuple(r.listed)) for r in rows}
    return ScriptedModel(truths, labels.labels, accuracy, seed=1)


@pytest.fixture
def calibrate_env(monkeypatch, tmp_path, model_root):
    monkeypatch.setenv("LLM_ROUTER_MODEL_DIR", str(model_root))
    monkeypatch.setenv("LLM_ROUTER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LLM_ROUTER_RETRY_MAX_WAIT_S", "0")
    monkeypatch.setenv("LLM_ROUTER_API_KEY", "test-key")
    return monkeypatch


def test_calibrate_writes_a_profile_the_router_then_uses(
    calibrate_env, tmp_path, model_root, sample_file, capsys
):
    with ChatServer(scripted(model_root, sample_file, 0.9)) as server:
        calibrate_env.setenv("LLM_ROUTER_BASE_URL", server.url)
        out = tmp_path / "run"
        args = ["--calibrate", "--n", "90", "--data", str(sample_file), "--out", str(out)]
        assert main([*args, "--rpm", "100000", "--price-per-mtok", "0"]) == 0
        asked = server.count
        assert asked == 90
        printed = capsys.readouterr().out
        assert "LLM alone" in printed and "combined (this profile)" in printed
        [path] = (model_root / "profiles").glob("*.json")
        profile = read_profile(path)
        assert profile.key.model == Settings().model
        assert profile.key.local_kind == "tfidf" and profile.rows["fit"] == 90
        assert profile.rows["out_of_fold"] == 90 and profile.rows["folds"] == 3
        assert profile.rows["logprobs_used"]
        held = profile.figures
        assert {"llm_alone", "local_alone", "uncombined", "combined", "cascade"} <= set(held)
        assert held["llm_alone"]["accuracy"] > 0.7  # the endpoint is right 90 % of the time
        assert 0.0 <= profile.cascade_threshold <= 1.0
        report = json.loads((out / "calibration.json").read_text())
        assert report["profile"] == str(path)
        assert "test-key" not in (out / "calibration.json").read_text()

        text = load_papers(str(sample_file))[0].text
        with Router.from_settings(Settings()) as router:
            result = router.classify(text)
        assert result.source == "llm" and result.followed is not None
        assert result.llm_answer is not None and result.llm_answer.confidence is not None
        assert result.local_candidates and 0.0 < result.confidence < 1.0


def test_a_rerun_pays_nothing_and_the_estimate_sends_nothing(
    calibrate_env, tmp_path, model_root, sample_file, capsys
):
    with ChatServer(scripted(model_root, sample_file, 0.5)) as server:
        calibrate_env.setenv("LLM_ROUTER_BASE_URL", server.url)
        base = ["--calibrate", "--n", "30", "--data", str(sample_file), "--rpm", "100000"]
        assert main([*base, "--estimate", "--price-per-mtok", "0"]) == 0
        assert server.count == 0 and "estimate for 30 rows" in capsys.readouterr().out
        assert main([*base, "--price-per-mtok", "0", "--out", str(tmp_path / "a")]) == 0
        assert server.count == 30
        assert main([*base, "--price-per-mtok", "0", "--out", str(tmp_path / "b")]) == 0
        assert server.count == 30  # the cache answered


def test_calibrate_respects_the_request_budget(calibrate_env, tmp_path, model_root, sample_file):
    with ChatServer(scripted(model_root, sample_file, 0.5)) as server:
        calibrate_env.setenv("LLM_ROUTER_BASE_URL", server.url)
        args = ["--calibrate", "--n", "40", "--data", str(sample_file), "--rpm", "100000"]
        code = main(
            [*args, "--max-requests", "25", "--price-per-mtok", "0", "--out", str(tmp_path)]
        )
        assert code == 0 and server.count == 25  # the rest are skipped, and said so


def test_calibrate_without_a_key_exits_2_with_one_line(calibrate_env, sample_file, capsys):
    calibrate_env.delenv("LLM_ROUTER_API_KEY")
    assert main(["--calibrate", "--n", "5", "--data", str(sample_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--calibrate" in err[0] and "API_KEY" in err[0]


# -- the fit on synthetic rows ---------------------------------------------------------------
def synthetic(n: int, llm_accuracy: float, seed: int = 0) -> list[Observation]:
    """Rows of a calibrated local model (top three at 0.6, 0.3 and 0.1, right that often) and
    an LLM right ``llm_accuracy`` of the time, whose mistakes are the local model's other
    likely labels (the hard kind)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ranked = rng.sample(LABELS, 3)
        u = rng.random()
        truth = ranked[0] if u < 0.6 else ranked[1] if u < 0.9 else ranked[2]
        local = tuple(
            Candidate(label=label, score=p)
            for label, p in zip(ranked, (0.6, 0.3, 0.1), strict=True)
        )
        wrong = [x for x in ranked if x != truth]
        llm = truth if rng.random() < llm_accuracy else rng.choice(wrong)
        rows.append(Observation(str(i), truth, local, llm, None))
    return rows


@pytest.mark.parametrize("llm_accuracy", [0.45, 0.9])
def test_the_fit_never_does_worse_than_the_local_model(llm_accuracy):
    fit_rows, held = synthetic(600, llm_accuracy, 1), synthetic(400, llm_accuracy, 2)
    params = fit(fit_rows, len(LABELS), use_logprob=False)
    post = [params.combine(o.local, len(LABELS), o.llm_label, None) for o in held]
    measured = figures(held, post, [params.llm_alone(None)] * len(held))
    assert params.llm_alone(None) == pytest.approx(llm_accuracy, abs=0.06)
    assert measured["combined"]["accuracy"] >= measured["local_alone"]["accuracy"] - 0.01
    assert measured["combined"]["accuracy"] >= measured["llm_alone"]["accuracy"] - 0.01
    assert measured["combined"]["ece"] < 0.08
    if llm_accuracy > 0.8:
        assert measured["combined"]["followed"].get("llm", 0) > 0


def test_the_cascade_threshold_meets_the_full_combination_with_fewer_calls():
    rows, post, alone = out_of_fold(folds(synthetic(600, 0.9, 3), 0), len(LABELS), False)
    chosen = cascade_threshold(rows, post)
    combined = figures(rows, post, alone)["combined"]["accuracy"]
    assert chosen["accuracy"] >= combined - 0.005 - 1e-9
    assert 0.0 <= chosen["llm_calls_share"] <= 1.0


def test_every_row_is_scored_by_a_fit_that_did_not_see_it():
    rows = synthetic(90, 0.7, 4)
    parts = folds(rows, 0)
    assert len(parts) == 3 and sorted(o.row_id for p in parts for o in p) == sorted(
        o.row_id for o in rows
    )
    scored, post, _alone = out_of_fold(parts, len(LABELS), False)
    assert len(scored) == len(post) == 90


def test_ctrl_c_writes_no_profile_and_a_rerun_resumes_from_the_cache(
    calibrate_env, tmp_path, model_root, sample_file
):
    from llm_router.testing import Reply
    from tests.conftest import interrupt_after

    model = scripted(model_root, sample_file, 0.7)
    with ChatServer(lambda body: Reply(**{**vars(model(body)), "delay_s": 0.3})) as server:
        calibrate_env.setenv("LLM_ROUTER_BASE_URL", server.url)
        args = ["--calibrate", "--n", "30", "--data", str(sample_file), "--rpm", "100000"]
        args += ["--concurrency", "1", "--price-per-mtok", "0"]
        code, stderr = interrupt_after(["eval", *args, "--out", str(tmp_path / "a")], server, 3)
        assert code == 130, stderr
        assert "no profile written" in stderr and "Traceback" not in stderr
        assert not (model_root / "profiles").exists()
        sent = server.count
        assert 3 <= sent < 30
        assert main([*args, "--out", str(tmp_path / "b")]) == 0
        assert server.count - sent == 30 - sent  # every answered row came from the cache
        assert list((model_root / "profiles").glob("*.json"))
