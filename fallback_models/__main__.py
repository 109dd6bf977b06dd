"""``python -m fallback_models train KIND --data PATH|HF_ID [--out ROOT]`` and ``info DIR``.

Also ``llm-router train`` and ``llm-router info DIR``; the kinds come from
:mod:`fallback_models.registry`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from fallback_models.bert import MODES, BertConfig
from fallback_models.data import HF_DATASET, DataError
from fallback_models.registry import MODELS
from llm_router.console import Parser, fail, setup_logging
from llm_router.errors import RouterError
from llm_router.settings import Settings


def _parser(prog: str) -> Parser:
    parser = Parser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train = sub.add_parser("train", help="train a local model and print its test metrics")
    train.add_argument("kind", choices=MODELS.trained)
    train.add_argument(
        "--data",
        default=HF_DATASET,
        help=f"local .jsonl[.gz]/.parquet/.csv or a hub id (default {HF_DATASET})",
    )
    train.add_argument(
        "--out", type=Path, help="model root (default: LLM_ROUTER_MODEL_DIR or ./models)"
    )
    train.add_argument("--seed", type=int, default=42, help="split and training seed")
    train.add_argument("--test-fraction", type=float, default=0.1)
    train.add_argument(
        "--split",
        choices=["random", "temporal"],
        default="random",
        help="random: seeded 90/10 by label; temporal: train before --cutoff, test after",
    )
    train.add_argument("--cutoff", default="2026-03-01", help="temporal split date (YYYY-MM-DD)")
    tfidf = train.add_argument_group("tfidf")
    tfidf.add_argument(
        "--calibration",
        choices=["random", "latest"],
        help="which held-out training rows fit the temperatures (default: the config's)",
    )
    bert = train.add_argument_group(
        "bert",
        "on a CPU the encoder stays frozen and a head is trained on its vectors (cached on "
        "disk); on a GPU the whole encoder is fine-tuned",
    )
    defaults = BertConfig()
    bert.add_argument("--base", help="base checkpoint: hub id or local directory")
    bert.add_argument("--mode", choices=MODES, default=defaults.mode, help="default: auto")
    bert.add_argument("--device", help="torch device (default: cuda when available)")
    bert.add_argument("--max-length", type=int, default=defaults.max_length)
    bert.add_argument(
        "--max-train-rows",
        type=int,
        default=defaults.max_train_rows,
        help=f"frozen: rows embedded for the head (default {defaults.max_train_rows}; "
        "0 for every training row)",
    )
    bert.add_argument("--hidden", type=int, default=defaults.hidden, help="frozen: head width")
    bert.add_argument("--head-epochs", type=int, default=defaults.head_epochs)
    bert.add_argument(
        "--cache-dir",
        type=Path,
        help="frozen: where the vectors of training rows are kept "
        "(default: LLM_ROUTER_CACHE_DIR's sibling 'embeddings', ~/.cache/llm-router/embeddings)",
    )
    bert.add_argument("--epochs", type=float, default=defaults.epochs, help="finetune")
    bert.add_argument("--batch-size", type=int, default=defaults.batch_size, help="finetune")
    bert.add_argument("--lr", type=float, default=defaults.learning_rate, help="finetune")
    info = sub.add_parser("info", help="print a model directory's manifest")
    info.add_argument("directory", type=Path)
    return parser


def _summary(manifest: dict[str, Any]) -> str:
    m = manifest["metrics"]
    lines = [
        f"{manifest['kind']}: {len(manifest['label_set']['labels'])} labels, "
        f"trained on {m.get('train_rows', manifest['split']['train_rows']):,} rows "
        f"in {m['train_seconds']} s",
        f"test ({m['test_rows']:,} rows): top-1 {m['top1']:.4f}  top-5 {m['top5']:.4f}  "
        f"macro-F1 {m['macro_f1']:.4f}  weighted-F1 {m['weighted_f1']:.4f}  "
        f"ECE {m.get('ece', float('nan')):.4f}  "
        f"{m['inference_ms_per_text']:.3f} ms/text",
        "worst classes: "
        + ", ".join(f"{w['label']} {w['f1']:.2f} (n={w['support']})" for w in m["worst_classes"]),
        "most confused: "
        + ", ".join(f"{c['true']}→{c['predicted']} ×{c['count']}" for c in m["confused_pairs"][:5]),
    ]
    ensemble = manifest.get("ensemble")
    if ensemble:
        e = ensemble["metrics"]
        lines.append(
            f"ensemble with tfidf (weights {ensemble['weights']}, T {ensemble['temperature']:.2f}, "
            f"fitted on {ensemble['fitted_on_rows']:,} held-out training rows): "
            f"top-1 {e['top1']:.4f}  top-5 {e['top5']:.4f}  ECE {e['ece']:.4f}"
        )
    return "\n".join(lines)


def describe(directory: Path) -> int:
    """Print a model directory's manifest (test ids counted, sha256s shortened)."""
    path = directory / "manifest.json"
    if not path.is_file():
        return fail(f"no manifest.json in {directory}")
    manifest = json.loads(path.read_text())
    manifest["split"]["test_ids"] = f"<{len(manifest['split']['test_ids'])} ids>"
    manifest["files"] = {k: v[:12] + "…" for k, v in manifest["files"].items()}
    print(json.dumps(manifest, indent=2))
    return 0


def main(argv: list[str] | None = None, *, prog: str = "python -m fallback_models") -> int:
    args = _parser(prog).parse_args(argv)
    setup_logging()
    if args.command == "info":
        return describe(args.directory)

    from fallback_models.train import prepare_dataset

    try:
        out = (args.out or Settings().model_dir) / args.kind
        print(f"loading {args.data} …", file=sys.stderr)
        dataset = prepare_dataset(
            args.data,
            seed=args.seed,
            test_fraction=args.test_fraction,
            split=args.split,
            cutoff=args.cutoff,
        )
        print(
            f"{len(dataset.papers):,} rows, {len(dataset.labels)} labels; "
            f"train {len(dataset.train_idx):,} / test {len(dataset.test_idx):,}",
            file=sys.stderr,
        )
        settings = Settings()
        options = vars(args)
        options["cache_dir"] = args.cache_dir or settings.resolved_cache_dir().parent / "embeddings"
        manifest = MODELS.train(args.kind, dataset, out, options)
    except (DataError, RouterError) as exc:
        return fail(exc)
    except KeyboardInterrupt:
        print(f"\ninterrupted: nothing was saved; {out} is as it was", file=sys.stderr)
        return 130
    print(_summary(manifest))
    print(f"saved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
