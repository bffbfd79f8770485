"""`resnets gradients`: train briefly and record every layer's gradient (vanishing gradients)."""

import argparse

HELP = "train briefly while recording each layer's gradient norm; plot it over steps and depth"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="plain56", help="registered name (default plain56)")
    parser.add_argument(
        "--data", default="digits", help="digits | folder:PATH | cifar10:PATH | signs:PATH"
    )
    parser.add_argument("--steps", type=int, default=100, help="optimiser steps (default 100)")
    parser.add_argument(
        "--every", type=int, default=5, help="record every K-th step, and the last (default 5)"
    )
    parser.add_argument(
        "--no-batchnorm",
        dest="batch_norm",
        action="store_false",
        help="build the model without batch norm, where gradients vanish or explode",
    )
    parser.add_argument(
        "--init",
        choices=["he", "pytorch"],
        default="he",
        help="he: the paper's He (fan-out) init (default); pytorch: PyTorch's default init",
    )
    parser.add_argument("--batch-size", type=int, help="default: the dataset recipe's")
    parser.add_argument("--lr", type=float, help="constant learning rate for a batch of 128")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--val-size",
        type=float,
        default=0.1,
        help="held-out part of a folder without val/ (kept out of training)",
    )
    parser.add_argument("--image-size", type=int, help="resize images to this square side")
    parser.add_argument(
        "--out", help="output folder (default runs/gradients-MODEL[-nobn][-pytorchinit])"
    )


def run(args: argparse.Namespace) -> int:
    from ..diagnostics.gradients import GradientsConfig, run_gradients

    config = GradientsConfig(
        model=args.model,
        data=args.data,
        steps=args.steps,
        every=args.every,
        batch_norm=args.batch_norm,
        init=args.init,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        val_size=args.val_size,
        image_size=args.image_size,
        out=args.out,
    )
    result = run_gradients(config)
    if result.diverged_at is not None:
        print(f"training diverged at step {result.diverged_at}; recorded the steps before it")
    print(f"{config.label}: {result.spread.describe()}")
    figures = ", ".join(str(path) for path in result.figures)
    sampled = len({row["step"] for row in result.layer_rows})
    print(
        f"{result.steps_run} step{'s' * (result.steps_run != 1)} run, {sampled} sampled into "
        f"{result.out / 'gradients.csv'}; "
        f"figures {figures}"
    )
    return 0
