"""The label space: balancing, the raw-code mapping, names and answer parsing."""

from __future__ import annotations

import json

import pytest

from llm_router.labels import OTHER, LabelSet, build_label_mapping, canonical_code, display_name
from llm_router.prompts import load_prompt
from tests.conftest import TAXONOMY


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("cs.SY", "eess.SY"),
        ("math.MP", "math-ph"),
        ("stat.TH", "math.ST"),
        ("cs.NA", "math.NA"),
        ("math.IT", "cs.IT"),
        ("q-fin.EC", "econ.GN"),
        ("alg-geom", "math.AG"),
        (" cs.CV ", "cs.CV"),
    ],
)
def test_aliases_map_to_their_canonical_code(raw, code):
    assert canonical_code(raw) == code


def test_rare_codes_merge_into_their_archive_then_other():
    raw = ["math.GM"] * 60 + ["math.HO"] * 50 + ["cs.CV"] * 150 + ["nucl-th"] * 3 + ["q-bio.CB"] * 5
    mapping = build_label_mapping(raw, min_rows=100)
    assert mapping["cs.CV"] == "cs.CV"
    assert mapping["math.GM"] == mapping["math.HO"] == "math"  # 110 rows together
    assert mapping["nucl-th"] == OTHER and mapping["q-bio.CB"] == OTHER


def test_merging_changes_labels_never_rows():
    raw = ["math.GM"] * 60 + ["cs.CV"] * 150
    labels = LabelSet.from_raw_labels(raw, min_rows=100)
    mapped = [labels.to_deployed(r) for r in raw]
    assert len(mapped) == len(raw)
    assert mapped.count("cs.CV") == 150 and mapped.count(OTHER) == 60


def test_aliases_are_counted_with_their_canonical_code():
    raw = ["eess.SY"] * 95 + ["cs.SY"] * 10
    assert LabelSet.from_raw_labels(raw).labels == ("eess.SY",)


def test_to_deployed_handles_unseen_merged_and_legacy_codes():
    labels = LabelSet.from_raw_labels(
        ["eess.SY"] * 100
        + ["math-ph"] * 100
        + ["math.GM"] * 60
        + ["math.HO"] * 50
        + ["astro-ph.GA"] * 100
        + ["hep-ex"] * 5
    )
    assert labels.to_deployed("cs.SY") == "eess.SY"
    assert labels.to_deployed("math.MP") == "math-ph"
    assert labels.to_deployed("math.GM") == "math"
    assert labels.to_deployed("math.AT") == "math"  # unseen, its archive is a label
    assert labels.to_deployed("astro-ph") == OTHER  # legacy bare archive, not a label here
    assert labels.to_deployed("q-bio.XX") == OTHER  # unknown code
    assert LabelSet(("cs.CV",)).to_deployed("hep-th") is None  # no 'other' to fall into


def test_names_for_categories_merged_archives_and_other():
    assert display_name("cs.CV") == "Computer Vision and Pattern Recognition"
    assert display_name("math") == "Mathematics (other areas)"
    assert display_name("gr-qc") == "General Relativity and Quantum Cosmology"
    assert display_name(OTHER).startswith("Other")


def test_prompt_lists_merged_archives_by_name():
    labels = LabelSet.from_raw_labels(["math.GM"] * 60 + ["math.HO"] * 60 + ["cs.CV"] * 100)
    system = load_prompt("classify/v1").system(labels)
    assert "math — Mathematics (other areas)" in system


def test_full_taxonomy_is_the_label_set_before_training():
    labels = LabelSet.full_taxonomy()
    assert "cs.CV" in labels and "math.AP" in labels
    assert "cs.SY" not in labels and "math.MP" not in labels  # aliases are not labels


@pytest.mark.parametrize(
    "answer", ["cs.CVX", "I think it is cs.CV", "cs", "", "x" * 500, "cs.CV cs.LG"]
)
def test_answers_that_merely_contain_a_code_are_invalid(answer):
    assert LabelSet.full_taxonomy().parse_answer(answer) is None


def test_round_trip_through_a_manifest_dict():
    labels = LabelSet.from_raw_labels(["math.GM"] * 100 + ["cs.CV"] * 100)
    again = LabelSet.from_dict(json.loads(json.dumps(labels.to_dict())))
    assert again == labels and again.sha256 == labels.sha256


def test_taxonomy_table_matches_arxivs_own_file():
    from llm_router.taxonomy import ALIASES, ARCHIVES, CATEGORIES, SUBSUMED_ARCHIVES

    if not TAXONOMY.is_file():
        pytest.skip(f"{TAXONOMY} not found")
    official = json.loads(TAXONOMY.read_text())
    assert official["aliases"] == ALIASES
    assert official["subsumed_archives"] == SUBSUMED_ARCHIVES
    assert official["archives"] == ARCHIVES
    assert {
        k: (v["name"], v["archive"], v["active"]) for k, v in official["categories"].items()
    } == CATEGORIES


def test_every_label_has_its_arxiv_group_and_name_as_the_shared_taxonomy_says():
    from llm_router.labels import group_of
    from llm_router.schemas import Classification
    from llm_router.taxonomy import ARCHIVES, CATEGORIES

    if not TAXONOMY.is_file():
        pytest.skip(f"shared taxonomy not found at {TAXONOMY}")
    shared = json.loads(TAXONOMY.read_text())["categories"]
    for code, entry in shared.items():
        result = Classification(label=code, source="tfidf")
        assert result.group == entry["group"], code
        assert result.name == display_name(code) and result.name
    groups = {entry["group"] for entry in shared.values()}
    assert len(groups) == 8
    for archive in ARCHIVES:  # merged archive labels (math.GM -> math) keep their group
        members = {shared[c]["group"] for c in CATEGORIES if CATEGORIES[c][1] == archive}
        assert {group_of(archive)} == members, archive
    other = Classification(label=OTHER, source="tfidf")
    assert other.group is None and other.name.startswith("Other")
    assert Classification(label="cs.CV", source="llm").model_dump()["group"] == "Computer Science"
