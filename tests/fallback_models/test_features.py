"""The numpy featuriser against scikit-learn's TfidfVectorizer, the temporal split, ECE and
the calibration slice."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from fallback_models.features import WordNgramTfidf
from fallback_models.scoring import expected_calibration_error
from fallback_models.tfidf import TfidfConfig, calibration_rows
from fallback_models.train import prepare_dataset


def _sklearn(texts, **kw):
    vec = TfidfVectorizer(
        ngram_range=(1, 2), sublinear_tf=True, strip_accents="unicode", dtype=np.float32, **kw
    )
    return vec, vec.fit_transform(texts)


def test_features_equal_scikit_learns_when_every_ngram_is_kept(sample_rows):
    texts = [f"{r['title']}. {r['abstract']}" for r in sample_rows[:600]]
    ours, x = WordNgramTfidf.fit(texts, max_features=10**9, min_df=2)
    vec, expected = _sklearn(texts, min_df=2)
    names = vec.get_feature_names_out()
    n = len(ours.tokens)
    terms = [
        ours.tokens[k] if k < n else f"{ours.tokens[k // n - 1]} {ours.tokens[k % n]}"
        for k in ours.keys
    ]
    assert sorted(terms) == sorted(names)
    columns = [vec.vocabulary_[t] for t in terms]
    assert np.allclose(x.toarray(), expected[:, columns].toarray(), atol=1e-5)
    unseen = [r["abstract"] for r in sample_rows[600:650]]
    assert np.allclose(
        ours.transform(unseen).toarray(), vec.transform(unseen)[:, columns].toarray(), atol=1e-5
    )


def test_max_features_keeps_the_most_frequent_ngrams_and_handles_edge_texts():
    texts = ["alpha beta gamma", "alpha beta delta", "alpha epsilon", "zeta eta"]
    ours, x = WordNgramTfidf.fit(texts, max_features=2, min_df=2)
    assert x.shape == (4, 2)
    n = len(ours.tokens)
    terms = {
        ours.tokens[k] if k < n else f"{ours.tokens[k // n - 1]} {ours.tokens[k % n]}"
        for k in ours.keys
    }
    assert terms == {"alpha", "beta"} or terms == {"alpha", "alpha beta"}
    empty = ours.transform(["", "   ", "no known words", "Ålpha"])  # accents stripped
    assert empty.shape == (4, 2) and empty[:3].nnz == 0 and empty[3].nnz == 1


def test_temporal_split_trains_on_older_and_tests_on_newer_papers(sample_file):
    ds = prepare_dataset(str(sample_file), min_rows=30, split="temporal", cutoff="2026-03-01")
    assert all(ds.papers[i].published < "2026-03-01" for i in ds.train_idx)
    assert all(ds.papers[i].published >= "2026-03-01" for i in ds.test_idx)
    assert ds.train_idx and ds.test_idx
    assert ds.manifest_fields()["split"]["kind"] == "temporal"
    with pytest.raises(ValueError, match="split must be one of"):
        prepare_dataset(str(sample_file), split="yearly")


def test_listed_categories_are_mapped_to_deployed_labels(sample_file):
    ds = prepare_dataset(str(sample_file), min_rows=30)
    listed = ds.listed(ds.test_idx)
    assert all(ds.targets[i] in cats for i, cats in zip(ds.test_idx, listed, strict=True))
    assert any(len(cats) > 1 for cats in listed)
    assert set().union(*listed) <= set(ds.labels.labels)


def test_expected_calibration_error_by_hand():
    # bin (0.8, 0.9]: conf 0.85 twice, 1 right -> |0.5 - 0.85| * 2/4; bin (0.2, 0.3]: 0.25 twice,
    # both wrong -> |0 - 0.25| * 2/4
    ece = expected_calibration_error([0.85, 0.85, 0.25, 0.25], [True, False, False, False])
    assert ece == pytest.approx(0.35 * 0.5 + 0.25 * 0.5)
    assert expected_calibration_error([1.0, 0.0], [True, False]) == 0.0
    assert expected_calibration_error([], []) == 0.0


def test_latest_calibration_slice_takes_the_newest_rows():
    config = TfidfConfig(calibration="latest", calibration_fraction=0.25)
    published = [
        "2026-01-02",
        None,
        "2026-05-01",
        "2025-12-31",
        "2026-04-30",
        "2026-05-01",
        "2025-01-01",
        "2026-02-02",
    ]
    mask = calibration_rows(8, config, published)
    assert np.flatnonzero(mask).tolist() == [2, 5]
    with pytest.raises(ValueError, match="published dates"):
        calibration_rows(8, config, None)
    random = calibration_rows(8, TfidfConfig(calibration_fraction=0.25))
    assert random.sum() == 2
