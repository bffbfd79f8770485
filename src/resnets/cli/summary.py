"""`resnets summary`: a model's blocks or layers, output shapes, parameters and multiply-adds."""

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

HELP = "show a model's blocks (or layers), output shapes, parameters and multiply-adds"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name", help="a registered model (see `resnets models`) or a saved model directory"
    )
    parser.add_argument(
        "--input-size",
        metavar="C,H,W",
        help="one image's channels, height and width; default 3,224,224 for models with the "
        "ImageNet stem, 3,32,32 for CIFAR ones. A C other than the model's builds the model "
        "for C-channel images",
    )
    parser.add_argument("--num-classes", type=int, metavar="K", help="size of the classifier")
    parser.add_argument(
        "--depth",
        choices=("block", "layer"),
        default="block",
        help="one row per stem, block and head part (default), or per conv, norm, pool, linear",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--diagram",
        metavar="FILE",
        type=Path,
        help="also draw the block structure, as the paper's figures do, to FILE (.png, .svg, .pdf)",
    )


def parse_input_size(text: str) -> tuple[int, int, int]:
    """'3,224,224' (or '3x224x224') -> (3, 224, 224)."""
    from ..errors import UsageError

    parts = text.replace("x", ",").split(",")
    try:
        size = tuple(int(part) for part in parts)
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise UsageError(
            f"--input-size expects channels,height,width as three positive integers, such as "
            f"--input-size 3,224,224; got {text!r}"
        )
    return size  # type: ignore[return-value]


def resolve_config(name: str, **options: Any):
    """The ResNetConfig of a registered name or of a model directory, with `options` set."""
    from ..errors import UsageError
    from ..models.registry import list_models, model_config
    from ..models.resnet import ResNetConfig
    from ..weights import read_model_config

    if name in list_models() or not Path(name).is_dir():
        return model_config(name, **options)  # raises, with suggestions, for unknown names
    config = ResNetConfig.from_dict(read_model_config(name)["model"])
    try:
        return replace(config, **options)
    except (TypeError, ValueError) as error:
        raise UsageError(f"bad options for the model in {name}: {error}") from error


def run(args: argparse.Namespace) -> int:
    import torch

    from ..diagram import check_diagram_path, draw_diagram
    from ..models.resnet import ResNet
    from ..summary import render_table, summarize

    input_size = parse_input_size(args.input_size) if args.input_size else None
    options: dict[str, Any] = {}
    if args.num_classes is not None:
        options["num_classes"] = args.num_classes
    if input_size is not None:
        options["in_channels"] = input_size[0]
    if args.diagram is not None:
        check_diagram_path(args.diagram)
    config = resolve_config(args.name, **options)
    with torch.device("meta"):  # shapes are all a summary needs: no weights are allocated
        model = ResNet(config)

    summary = summarize(model, input_size, args.depth)
    print(summary.to_json() if args.json else render_table(summary))
    if args.diagram is not None:
        title = Path(args.name).name if Path(args.name).is_dir() else args.name
        path = draw_diagram(model, args.diagram, input_size=input_size, title=title)
        if not args.json:  # stdout then holds JSON only
            print(f"diagram written to {path}")
    return 0
