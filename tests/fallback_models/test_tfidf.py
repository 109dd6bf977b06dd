"""The TF-IDF model: accuracy sanity, calibrated top-k, safe round trip, tamper refusal."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

from fallback_models.tfidf import TfidfClassifier
from llm_router import ModelNotAvailable, Router, Settings


@pytest.fixture(scope="module")
def model(trained_models):
    return TfidfClassifier.load(trained_models / "tfidf")


def test_manifest_records_what_a_user_needs(trained_models):
    manifest = json.loads((trained_models / "tfidf" / "manifest.json").read_text())
    assert manifest["kind"] == "tfidf"
    assert manifest["label_set"]["labels"] and manifest["label_set"]["mapping"]
    assert len(manifest["data"]["sha256"]) == 64
    assert manifest["split"]["seed"] == 42 and manifest["split"]["test_ids"]
    assert set(manifest["files"]) == {"vocab.json", "weights.npz", "config.json"}
    assert {"top1", "top5", "macro_f1", "worst_classes", "confused_pairs"} <= set(
        manifest["metrics"]
    )
    assert "torch" in manifest["library_versions"]


def test_learns_something_real(trained_models):
    metrics = json.loads((trained_models / "tfidf" / "manifest.json").read_text())["metrics"]
    # 4,000 rows over ~30 labels: far above the ~10% of always answering the largest class
    assert metrics["top1"] > 0.4 and metrics["top5"] > metrics["top1"]


def test_gives_calibrated_top5_candidates(model, sample_rows):
    result = model.classify(sample_rows[0]["abstract"])
    assert result.source == "tfidf" and len(result.candidates) == 5
    scores = [c.score for c in result.candidates]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
    proba = model.predict_proba([r["abstract"] for r in sample_rows[:20]])
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert model.temperature > 0


def test_round_trip_gives_identical_probabilities(model, trained_models, tmp_path, sample_rows):
    texts = [r["abstract"] for r in sample_rows[:50]]
    model.save(tmp_path / "tfidf")
    again = TfidfClassifier.load(tmp_path / "tfidf")
    assert np.array_equal(model.predict_proba(texts), again.predict_proba(texts))


def copy_model(trained_models, tmp_path):
    target = tmp_path / "tfidf"
    shutil.copytree(trained_models / "tfidf", target)
    return target


def test_a_changed_byte_is_refused(trained_models, tmp_path):
    target = copy_model(trained_models, tmp_path)
    data = bytearray((target / "weights.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (target / "weights.npz").write_bytes(bytes(data))
    with pytest.raises(ModelNotAvailable, match="weights.npz changed") as info:
        TfidfClassifier.load(target)
    assert info.value.reason == "tampered_artifacts"


def test_a_missing_file_is_refused(trained_models, tmp_path):
    target = copy_model(trained_models, tmp_path)
    (target / "vocab.json").unlink()
    with pytest.raises(ModelNotAvailable, match="missing vocab.json"):
        TfidfClassifier.load(target)


def test_a_planted_pickle_is_refused(trained_models, tmp_path):
    target = copy_model(trained_models, tmp_path)
    (target / "model.pkl").write_bytes(pickle.dumps({"not": "loaded"}))
    with pytest.raises(ModelNotAvailable, match="unexpected file model.pkl"):
        TfidfClassifier.load(target)


def test_router_skips_a_tampered_model_with_the_reason(trained_models, tmp_path, caplog):
    target = copy_model(trained_models, tmp_path)
    (target / "config.json").write_text("{}")
    router = Router.from_settings(Settings(model_dir=tmp_path, fallbacks="tfidf", cache=False))
    from llm_router import AllClassifiersFailed

    with pytest.raises(AllClassifiersFailed) as info:
        router.classify("An abstract about galaxies.")
    assert [e.reason for e in info.value.errors] == ["no_api_key", "tampered_artifacts"]
    assert "config.json changed" in caplog.text


def test_default_chain_picks_up_the_trained_model(trained_models, sample_rows):
    router = Router.from_settings(Settings(model_dir=trained_models, cache=False))
    result = router.classify(sample_rows[1]["abstract"])
    assert (result.source, result.fallback_reason) == ("tfidf", "no_api_key")
    assert len(result.candidates) >= 5
    manifest = json.loads((trained_models / "tfidf" / "manifest.json").read_text())
    assert result.label in manifest["label_set"]["labels"]


def test_the_llm_is_offered_the_trained_label_set(trained_models, make_settings, server):
    router = Router.from_settings(make_settings(model_dir=trained_models))
    router.classify("Some abstract about the cosmic microwave background.")
    enum = server.requests[0].body["response_format"]["json_schema"]["schema"]["properties"][
        "label"
    ]["enum"]
    manifest = json.loads((trained_models / "tfidf" / "manifest.json").read_text())
    assert enum == manifest["label_set"]["labels"]


def test_a_model_from_the_previous_format_asks_to_be_retrained(trained_models, tmp_path):
    from fallback_models.artifacts import write_manifest

    target = copy_model(trained_models, tmp_path)
    manifest = json.loads((target / "manifest.json").read_text())
    (target / "vocab.json").write_text(json.dumps({"word": ["alpha", "beta"]}))  # old layout
    fields = {k: v for k, v in manifest.items() if k not in ("format_version", "kind", "files")}
    labels = TfidfClassifier.load(trained_models / "tfidf").labels
    fields.pop("label_set")
    write_manifest(target, "tfidf", labels, **fields)
    with pytest.raises(ModelNotAvailable, match="older version of llm-router; retrain") as info:
        TfidfClassifier.load(target)
    assert info.value.reason == "bad_artifacts"


@pytest.mark.parametrize("bits", [4, 8, 16])
@pytest.mark.parametrize("cols", [96, 7, 1])
def test_stored_weights_are_within_half_a_step_of_the_trained_ones(bits, cols):
    from fallback_models.tfidf import _pack, _unpack

    rng = np.random.default_rng(cols)
    w = rng.normal(size=(40_000, cols)).astype(np.float32)  # more rows than one packing block
    w[3] = 0.0
    back = _unpack("w", _pack("w", w, bits))
    assert back.shape == w.shape and back.dtype == np.float32 and back.flags.c_contiguous
    top = np.abs(w).max(axis=1)
    step = top / {4: 7, 8: 127}[bits] if bits != 16 else top * 2.0**-10
    assert np.all(np.abs(back - w) <= step[:, None] / 2 + 1e-7)
    assert not back[3].any()


def test_four_bit_weights_take_half_a_byte_each():
    from fallback_models.tfidf import _pack

    packed = _pack("w", np.ones((1000, 96), dtype=np.float32), 4)
    assert packed["w_q4"].nbytes == 1000 * 48 and packed["w_q4"].dtype == np.uint8


def test_every_network_is_saved_and_used(model, tmp_path, sample_rows):
    assert [h.w1.shape[1] for h in model.networks] == list(model.config.mlp_hidden)
    assert len(model.temperatures) == len(model.networks) + 2
    texts = [r["abstract"] for r in sample_rows[:20]]
    alone = TfidfClassifier(model.labels, model.features, model.linear, model.config)
    assert not np.allclose(alone.predict_proba(texts), model.predict_proba(texts))


def test_a_one_network_int8_model_of_the_previous_round_still_loads(tmp_path, sample_rows):
    from fallback_models.tfidf import TfidfConfig
    from llm_router.labels import LabelSet

    rows = sample_rows[:300]
    labels = LabelSet.from_raw_labels([r["primary_category"] for r in rows], 1)
    targets = [labels.to_deployed(r["primary_category"]) or "other" for r in rows]
    texts = [r["abstract"] for r in rows]
    config = TfidfConfig(mlp_hidden=(16,), weight_bits=8, calibration_fraction=0.1)
    trained = TfidfClassifier.train(texts, targets, labels, config)
    trained.save(tmp_path / "tfidf")
    stored = json.loads((tmp_path / "tfidf" / "config.json").read_text())
    assert stored["mlp_hidden"] == [16]
    stored["mlp_hidden"], stored["linear_weight"] = 16, 0.5  # how the previous round wrote it
    (tmp_path / "tfidf" / "config.json").write_text(json.dumps(stored))
    from fallback_models.artifacts import write_manifest

    write_manifest(tmp_path / "tfidf", "tfidf", labels)
    again = TfidfClassifier.load(tmp_path / "tfidf")
    assert again.config.mlp_hidden == (16,) and len(again.networks) == 1
    assert np.allclose(again.predict_proba(texts[:10]), trained.predict_proba(texts[:10]))


def test_a_save_that_fails_midway_leaves_the_old_model_as_it_was(
    model, trained_models, tmp_path, sample_rows
):
    """The new model is written beside the live folder and swapped in only when complete:
    a save that fails after the weights are written (here, at the manifest) changes nothing."""
    target = copy_model(trained_models, tmp_path)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(TypeError):
        model.save(target, metrics={"unserialisable": object()})
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tfidf"]  # no staging left behind
    texts = [r["abstract"] for r in sample_rows[:20]]
    assert np.array_equal(
        TfidfClassifier.load(target).predict_proba(texts), model.predict_proba(texts)
    )


def test_a_completed_save_replaces_the_old_model_whole(model, trained_models, tmp_path):
    target = copy_model(trained_models, tmp_path)
    (target / "stale.txt").write_text("left by an older format")
    model.save(target, metrics={"note": "new"})
    assert "stale.txt" not in {p.name for p in target.iterdir()}
    assert json.loads((target / "manifest.json").read_text())["metrics"] == {"note": "new"}
    TfidfClassifier.load(target)
