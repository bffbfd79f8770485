"""`resnets predict`: the most likely classes for each image file."""

import argparse
import json
import sys

from .predict_options import add_inference_arguments, inference_options

HELP = "classify image files with a trained run: top-k class names and probabilities"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (or model directory)")
    parser.add_argument(
        "files", nargs="+", help="image files, or folders: the image files under them"
    )
    parser.add_argument("--top-k", type=int, default=3)
    add_inference_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    """Print each readable file's classes as they come, and one stderr line per unreadable
    file (exit 1)."""
    from ..errors import UsageError
    from ..inference.predictor import Predictor, image_files_under

    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    predictor = Predictor(args.run, **inference_options(args))
    files = [file for given in args.files for file in image_files_under(given)]
    width = max(len(str(file)) for file in files)
    printed, failed = [], 0
    for prediction in predictor.iter_predictions(files, top_k=args.top_k):
        if prediction.error is not None:
            print(f"resnets predict: error: {prediction.error}", file=sys.stderr)
            failed += 1
        elif not args.json:
            print(_table_line(prediction, width), flush=True)
        if args.json:
            printed.append(prediction)
    if args.json:
        print(json.dumps([_as_json(p) for p in printed], indent=2))
    return 1 if failed else 0


def _as_json(prediction) -> dict:
    if prediction.error is not None:
        return {"file": prediction.file, "error": prediction.error}
    top = zip(prediction.classes, prediction.probabilities, strict=True)
    return {
        "file": prediction.file,
        "top": [{"class": c, "probability": round(q, 6)} for c, q in top],
    }


def _table_line(prediction, width: int) -> str:
    top = zip(prediction.classes, prediction.probabilities, strict=True)
    ranked = "  ".join(f"{c} {100 * q:5.1f}%" for c, q in top)
    return f"{prediction.file:<{width}}  {ranked}"
