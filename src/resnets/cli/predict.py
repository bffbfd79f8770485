"""`resnets predict`: the most likely classes for each image file."""

import argparse
import json
import sys

from .predict_options import add_inference_arguments, inference_options

HELP = "classify image files with a trained run: top-k class names and probabilities"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (or model directory)")
    parser.add_argument("files", nargs="+", help="image files")
    parser.add_argument("--top-k", type=int, default=3)
    add_inference_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    """Print each readable file's classes, and one stderr line per unreadable file (exit 1)."""
    from ..errors import UsageError
    from ..inference.predictor import Predictor

    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    predictions = Predictor(args.run, **inference_options(args)).predict_files(
        args.files, top_k=args.top_k
    )
    if args.json:
        print(json.dumps([_as_json(p) for p in predictions], indent=2))
    else:
        _print_table([p for p in predictions if p.error is None])
    failed = [p for p in predictions if p.error is not None]
    for p in failed:
        print(f"resnets predict: error: {p.error}", file=sys.stderr)
    return 1 if failed else 0


def _as_json(prediction) -> dict:
    if prediction.error is not None:
        return {"file": prediction.file, "error": prediction.error}
    top = zip(prediction.classes, prediction.probabilities, strict=True)
    return {
        "file": prediction.file,
        "top": [{"class": c, "probability": round(q, 6)} for c, q in top],
    }


def _print_table(predictions: list) -> None:
    width = max((len(p.file) for p in predictions), default=0)
    for p in predictions:
        ranked = "  ".join(
            f"{c} {100 * q:5.1f}%" for c, q in zip(p.classes, p.probabilities, strict=True)
        )
        print(f"{p.file:<{width}}  {ranked}")
