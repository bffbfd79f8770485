"""`resnets deepen`: add identity residual blocks to a trained model, predictions unchanged."""

import argparse
from pathlib import Path

HELP = "append K identity residual blocks (zero last norm scale) to a trained model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (or model directory) of a trained ResNet")
    parser.add_argument("--blocks", type=int, required=True, metavar="K", help="blocks to add")
    parser.add_argument(
        "--stage", type=int, metavar="S", help="stage to extend, 1 = first (default: the last)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the new blocks' He init")
    parser.add_argument("--out", help="model directory to write (default: RUN/deepened-K)")


def run(args: argparse.Namespace) -> int:
    from ..diagnostics.deepen import deepen_model_dir
    from ..errors import UsageError
    from ..inference.predictor import model_dir_of

    if args.stage is not None and args.stage < 1:
        raise UsageError(f"--stage counts from 1 (the first stage); got {args.stage}")
    source = model_dir_of(args.run)
    out = Path(args.out) if args.out else source.parent / f"deepened-{args.blocks}"
    stage = -1 if args.stage is None else args.stage - 1
    result = deepen_model_dir(source, out, args.blocks, stage, seed=args.seed)
    print(
        f"deepened from {result.old_depth} to {result.new_depth} layers ({args.blocks} identity "
        f"blocks appended to stage {result.stage + 1}); logits differ by at most "
        f"{result.max_logit_difference:.2g}; model saved to {result.model_dir}"
    )
    return 0
