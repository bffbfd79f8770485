"""`resnets benchmark`: images/s of a model beside torchvision's, on this machine's CPU."""

import argparse
from pathlib import Path

HELP = "time a model's inference or training in images/s, side by side with torchvision"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="a registered model (see `resnets models`)")
    parser.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help="images per batch; default 32 for inference, for training 16 ImageNet-sized "
        "or 128 CIFAR-sized images",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        metavar="S",
        help="side of the square images; default 224 for ImageNet models, 32 for CIFAR ones",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--infer", dest="mode", action="store_const", const="infer", help="inference (default)"
    )
    mode.add_argument(
        "--train",
        dest="mode",
        action="store_const",
        const="train",
        help="training: forward, loss, backward and an SGD step",
    )
    parser.set_defaults(mode="infer")
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        metavar="R",
        help="timed rounds, each running every variant in turn; the median counts (default 5)",
    )
    parser.add_argument(
        "--compile",
        choices=("auto", "yes", "no"),
        default="auto",
        help="also time resnets under torch.compile; auto: for inference only (default)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    from ..benchmark import benchmark, render_table
    from ..errors import UsageError

    if args.json is not None and not args.json.parent.is_dir():
        raise UsageError(
            f"--json {args.json}: the folder {args.json.parent} does not exist; create it or "
            "name a file in an existing folder"
        )
    result = benchmark(
        args.name,
        mode=args.mode,
        batch_size=args.batch_size,
        image_size=args.image_size,
        repeats=args.repeats,
        compile_model=args.compile,
    )
    print(render_table(result))
    if args.json is not None:
        args.json.write_text(result.to_json() + "\n")
        print(f"results written to {args.json}")
    return 0
