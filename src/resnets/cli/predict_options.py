"""The options that `predict` and `evaluate` share: how the predictor runs the model."""

import argparse


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        default="auto",
        help="auto (the default: bf16 where the hardware runs it natively, else float32; "
        "float32 with --backend onnx), 32-true, bf16-mixed or 16-mixed",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnx"],
        help="onnx: ONNX Runtime, float32 only, CPU; auto: ONNX Runtime for float32 on a CPU",
    )
    parser.add_argument(
        "--test-flip",
        action=argparse.BooleanOptionalAction,
        help="average each image's logits with its mirror image's (default: as the model "
        "was validated in training)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model first (seconds); pays on thousands of images",
    )


def inference_options(args: argparse.Namespace) -> dict:
    return {
        "precision": args.precision,
        "backend": args.backend,
        "test_flip": args.test_flip,
        "compile": args.compile,
    }
