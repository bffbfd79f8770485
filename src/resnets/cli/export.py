"""`resnets export`: write a trained model as ONNX, TorchScript, torch.export or torchvision."""

import argparse

HELP = "export a trained run for deployment (onnx, torchscript, torch-export, torchvision)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (or model directory)")
    # Not argparse `choices`: a mistyped format gets the library's "did you mean" hint.
    parser.add_argument(
        "--format",
        default="onnx",
        help="onnx (default; preprocessing and class names in its metadata), torchscript, "
        "torch-export (.pt2) or torchvision (a state dict for torchvision.models.resnetXX)",
    )
    parser.add_argument(
        "--out", metavar="FILE", help="file to write (default: RUN/export/model.onnx, .pt, ...)"
    )
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: torch's)")
    parser.add_argument(
        "--fold", action="store_true", help="fold batch norm into the convolutions first"
    )


def run(args: argparse.Namespace) -> int:
    from ..inference.export import CHECK_BATCH_SIZES, export_run

    result = export_run(args.run, args.format, args.out, opset=args.opset, fold=args.fold)
    batches = " and ".join(str(n) for n in CHECK_BATCH_SIZES)
    print(result.path)
    print(
        f"{result.format}: loaded back with {result.loaded_with}; logits within "
        f"{result.max_difference:.2e} of PyTorch eval mode on batches of {batches}"
    )
    return 0
