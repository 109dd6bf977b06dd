"""What the shortlist and the cascade would do on the whole test split, with no LLM at all.

For the trained TF-IDF model under ``--models`` (default ``models/``) on its own test split:
- the selective-accuracy curve: for each threshold on the calibrated top-1 probability, the
  share of rows the cascade keeps locally (coverage), the local accuracy on them, and the
  share that would reach the LLM, with the point of the configured default
  (``LLM_ROUTER_CASCADE_THRESHOLD``) and the lowest threshold on a 0.05 grid whose kept rows
  are right at least ``--target`` (0.90) of the time;
- the shortlist recall (true label among the local top K) for K = 3, 5, 8, 12, on every row
  and on the rows the cascade sends to the LLM;
- the top-1 accuracy at the level of arXiv's groups (Computer Science, Physics, ...);
- prompt tokens per request of each strategy's question, counted with a real tokenizer
  (the GGUF model's, through llama-cpp-python, when ``--gguf`` is given) or as characters / 4.

Writes the curve as a PNG next to the JSON.

Run: python bench/strategies.py --out bench/results/strategies.json \
        [--gguf "$(LOCAL_LLM_MODEL=gemma3 scripts/local_llm.sh model-path)"]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ABSTRACTS, emit, save  # noqa: E402
from fallback_models.artifacts import read_manifest  # noqa: E402
from fallback_models.data import load_papers  # noqa: E402
from fallback_models.tfidf import TfidfClassifier  # noqa: E402
from llm_router.labels import LabelSet  # noqa: E402
from llm_router.prompts import load_prompt  # noqa: E402
from llm_router.settings import CASCADE_THRESHOLD  # noqa: E402

KS = (3, 5, 8, 12)


def selective_curve(p1: np.ndarray, correct: np.ndarray, grid: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for t in grid:
        kept = p1 >= t
        rows.append(
            {
                "threshold": round(float(t), 3),
                "coverage": float(kept.mean()),
                "llm_share": float(1 - kept.mean()),
                "local_accuracy": float(correct[kept].mean()) if kept.any() else None,
                "accuracy_of_rest": float(correct[~kept].mean()) if (~kept).any() else None,
            }
        )
    return rows


def token_counter(gguf: str | None) -> tuple[str, Any]:
    if gguf:
        from llama_cpp import Llama

        vocab = Llama(model_path=gguf, vocab_only=True, verbose=False)
        return f"tokenizer of {Path(gguf).name}", lambda s: len(
            vocab.tokenize(s.encode("utf-8"), add_bos=True, special=True)
        )
    return "characters / 4", lambda s: len(s) / 4


def prompt_tokens(
    texts: list[str], ranked: np.ndarray, labels: LabelSet, count: Any, k: int
) -> dict[str, float]:
    """Mean tokens of the system + user messages of each kind of question."""
    full, short = load_prompt("classify/v1"), load_prompt("shortlist/v1")
    full_system = count(full.system(labels))
    per: dict[str, list[float]] = {"llm": [], "shortlist": [], "abstract_alone": []}
    for text, order in zip(texts, ranked, strict=True):
        offered = LabelSet(tuple(labels.labels[i] for i in order[:k]))
        user_full, user_short = count(full.user(text)), count(short.user(text))
        per["llm"].append(full_system + user_full)
        per["shortlist"].append(count(short.system(offered)) + user_short)
        per["abstract_alone"].append(count(text))
    return {name: float(np.mean(v)) for name, v in per.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument("--data", default=str(ABSTRACTS))
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--k", type=int, default=8, help="the shortlist size for the tokens")
    parser.add_argument("--gguf", help="count tokens with this GGUF model's tokenizer")
    parser.add_argument("--token-rows", type=int, default=500, help="rows for the token counts")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    model = TfidfClassifier.load(args.models / "tfidf")
    manifest = read_manifest(args.models / "tfidf", "tfidf")
    test_ids = set(manifest["split"]["test_ids"])
    labels = model.labels
    papers = [p for p in load_papers(args.data) if p.id in test_ids]
    truth = np.array(
        [labels.index(labels.to_deployed(p.primary_category) or "other") for p in papers]
    )
    texts = [p.text for p in papers]
    proba = np.vstack(
        [model.predict_proba(texts[i : i + 1024]) for i in range(0, len(texts), 1024)]
    )
    ranked = np.argsort(-proba, axis=1)
    p1 = proba.max(axis=1)
    correct = ranked[:, 0] == truth

    grid = np.round(np.arange(0.0, 1.0, 0.05), 2)
    curve = selective_curve(p1, correct, grid)
    lowest = next(
        (
            r
            for r in curve
            if r["local_accuracy"] is not None and r["local_accuracy"] >= args.target
        ),
        None,
    )
    default = next((r for r in curve if np.isclose(r["threshold"], CASCADE_THRESHOLD)), None)
    sent = p1 < CASCADE_THRESHOLD
    recall = {
        f"k{k}": {
            "all_rows": float(np.mean([t in r[:k] for t, r in zip(truth, ranked, strict=True)])),
            "rows_sent_by_cascade": float(
                np.mean([t in r[:k] for t, r, s in zip(truth, ranked, sent, strict=True) if s])
            ),
        }
        for k in KS
    }
    how, count = token_counter(args.gguf)
    step = max(1, len(texts) // args.token_rows)
    picked = slice(None, step * args.token_rows, step)
    tokens = prompt_tokens(texts[picked], ranked[picked], labels, count, args.k)
    tokens["shortlist_over_llm"] = tokens["shortlist"] / tokens["llm"]
    from llm_router.labels import group_of

    group = [group_of(label) or "other" for label in labels.labels]
    group_correct = np.array(
        [group[a] == group[b] for a, b in zip(ranked[:, 0], truth, strict=True)]
    )
    results = {
        "model": str(args.models / "tfidf"),
        "test_rows": len(texts),
        "top1": float(correct.mean()),
        "group_top1": float(group_correct.mean()),
        "groups": sorted(set(group)),
        "target_local_accuracy": args.target,
        "default_threshold": default,
        "lowest_threshold_meeting_target": lowest,
        "selective_curve": curve,
        "shortlist_recall": recall,
        "prompt_tokens": {
            "counted_with": how,
            "rows": min(args.token_rows, len(texts[::step])),
            "k": args.k,
            **tokens,
        },
    }
    emit("strategies", results)
    save(results, args.out)
    if args.out:
        plot(curve, default, args.out.with_suffix(".png"))


def plot(curve: list[dict[str, Any]], default: dict[str, Any] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    coverage = [r["coverage"] for r in curve]
    ax.plot(
        coverage,
        [r["local_accuracy"] for r in curve],
        marker="o",
        ms=3,
        label="local accuracy on kept rows",
    )
    ax.plot(
        coverage,
        [r["accuracy_of_rest"] for r in curve],
        marker=".",
        ms=3,
        ls="--",
        label="local accuracy on rows sent to the LLM",
    )
    if default:
        ax.axvline(default["coverage"], color="grey", lw=0.8)
        ax.annotate(
            f"default threshold {default['threshold']:.2f}\n{default['coverage']:.0%} kept locally",
            (default["coverage"], default["local_accuracy"]),
            textcoords="offset points",
            xytext=(8, -40),
            fontsize=8,
        )
    ax.set_xlabel("coverage (share of rows the cascade answers locally)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title("TF-IDF selective accuracy on the test split")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
