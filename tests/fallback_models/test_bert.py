"""The BERT path end to end on a tiny randomly initialised BERT built here (no download)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fallback_models.bert import BertClassifier, BertConfig  # noqa: E402
from llm_router import ModelNotAvailable, Router, Settings  # noqa: E402
from llm_router.labels import LabelSet  # noqa: E402

WORDS = [
    "galaxy",
    "star",
    "cosmology",
    "dark",
    "matter",
    "lensing",
    "graph",
    "theorem",
    "proof",
    "prime",
    "integer",
    "network",
    "neural",
    "image",
    "vision",
    "segmentation",
    "robot",
    "control",
    "quantum",
    "qubit",
    "entanglement",
]
TEXTS = {
    "astro-ph.CO": "dark matter cosmology lensing galaxy star",
    "math.NT": "prime integer theorem proof",
    "cs.CV": "image vision segmentation neural network",
    "quant-ph": "quantum qubit entanglement",
}


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A random 2-layer BERT and a word-level vocabulary, saved like a hub checkpoint."""
    base = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (base / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(base / "vocab.txt"))
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    return base


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory):
    labels = LabelSet(tuple(sorted(TEXTS)))
    texts = [TEXTS[label] for label in labels.labels] * 8
    targets = list(labels.labels) * 8
    config = BertConfig(
        base_model=str(tiny_base),
        max_length=32,
        epochs=30,
        batch_size=8,
        learning_rate=3e-3,
        warmup_fraction=0.0,
    )
    model = BertClassifier.train(texts, targets, labels, config, device="cpu")
    root = tmp_path_factory.mktemp("models")
    model.save(root / "bert", metrics={"note": "tiny"})
    return model, root


def test_fine_tunes_and_classifies(trained):
    model, _root = trained
    for label, text in TEXTS.items():
        result = model.classify(text)
        assert result.label == label and result.source == "bert"
        assert len(result.candidates) == 4  # top-k capped by the number of labels


def test_saves_safetensors_only_and_round_trips(trained):
    model, root = trained
    files = {p.name for p in (root / "bert").iterdir()}
    assert "model.safetensors" in files
    assert not {f for f in files if f.endswith((".bin", ".pt", ".pkl"))}
    again = BertClassifier.load(root / "bert", device="cpu")
    texts = list(TEXTS.values())
    assert np.allclose(model.predict_proba(texts), again.predict_proba(texts), atol=1e-6)
    manifest = json.loads((root / "bert" / "manifest.json").read_text())
    assert manifest["kind"] == "bert" and "model.safetensors" in manifest["files"]


def test_a_planted_pickle_is_refused(trained, tmp_path):
    import shutil

    _model, root = trained
    target = tmp_path / "bert"
    shutil.copytree(root / "bert", target)
    (target / "pytorch_model.bin").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(ModelNotAvailable, match="unexpected file pytorch_model.bin"):
        BertClassifier.load(target)


def test_router_uses_bert_before_tfidf(trained):
    _model, root = trained
    router = Router.from_settings(Settings(model_dir=root, cache=False, device="cpu"))
    result = router.classify(TEXTS["quant-ph"])
    assert (result.label, result.source, result.fallback_reason) == (
        "quant-ph",
        "bert",
        "no_api_key",
    )


def test_concurrent_calls_share_one_tokenizer_safely(trained):
    """A fast tokenizer is not thread-safe: a call that changes its padding or truncation
    while another thread encodes raises "Already borrowed" (huggingface/tokenizers#537)."""
    from concurrent.futures import ThreadPoolExecutor

    _model, root = trained
    model = BertClassifier.load(root / "bert", device="cpu")
    words = " ".join(WORDS)
    texts = [f"{TEXTS['cs.CV']} {words[: (i * 7) % len(words)]}" for i in range(64)]
    for _ in range(5):
        # As a checkpoint saved without padding would load: every first call sets it anew.
        model.tokenizer._tokenizer.no_padding()
        model.tokenizer._tokenizer.no_truncation()
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(model.classify, texts))
        assert len(results) == 64 and {r.source for r in results} == {"bert"}


def test_ensemble_averages_bert_and_tfidf_when_both_share_labels(trained):
    from fallback_models.tfidf import TfidfClassifier, TfidfConfig

    model, root = trained
    labels = model.labels
    texts = [TEXTS[label] for label in labels.labels] * 8
    tfidf = TfidfClassifier.train(
        texts, list(labels.labels) * 8, labels, TfidfConfig(min_df=1, calibration_fraction=0)
    )
    tfidf.save(root / "tfidf", metrics={"note": "tiny"})
    settings = Settings(model_dir=root, cache=False, device="cpu", fallbacks="ensemble,tfidf")
    result = Router.from_settings(settings).classify(TEXTS["math.NT"])
    assert (result.label, result.source) == ("math.NT", "ensemble")
    probe = list(TEXTS.values())
    expected = (model.predict_proba(probe) + tfidf.predict_proba(probe)) / 2
    from fallback_models.ensemble import EnsembleClassifier

    ensemble = EnsembleClassifier([model, tfidf])
    assert np.allclose(ensemble.predict_proba(probe), expected, atol=1e-6)
    assert result.candidates[0].score == pytest.approx(
        float(expected[list(TEXTS).index("math.NT")].max()), abs=1e-5
    )


def test_ensemble_is_refused_for_models_on_different_label_sets(trained):
    from fallback_models.ensemble import EnsembleClassifier

    model, _root = trained

    class Other:
        name = "other"
        labels = LabelSet(("a", "b"))

    with pytest.raises(ValueError, match="different label sets"):
        EnsembleClassifier([model, Other()])
