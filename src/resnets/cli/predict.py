"""`resnets predict`: the most likely classes for each image file."""

import argparse
import json

from .predict_options import add_inference_arguments, inference_options

HELP = "classify image files with a trained run: top-k class names and probabilities"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (or model directory)")
    parser.add_argument("files", nargs="+", help="image files")
    parser.add_argument("--top-k", type=int, default=3)
    add_inference_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..inference.predictor import Predictor

    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    predictions = Predictor(args.run, **inference_options(args)).predict_files(
        args.files, top_k=args.top_k
    )
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "file": p.file,
                        "top": [
                            {"class": c, "probability": round(q, 6)}
                            for c, q in zip(p.classes, p.probabilities, strict=True)
                        ],
                    }
                    for p in predictions
                ],
                indent=2,
            )
        )
        return 0
    width = max(len(p.file) for p in predictions)
    for p in predictions:
        ranked = "  ".join(
            f"{c} {100 * q:5.1f}%" for c, q in zip(p.classes, p.probabilities, strict=True)
        )
        print(f"{p.file:<{width}}  {ranked}")
    return 0
