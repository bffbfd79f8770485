"""`resnets compare`: plain versus residual networks, trained alike (He et al. 2015, Fig. 6)."""

import argparse

HELP = "train plain and residual networks alike; plot their error curves and gradients"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        default="plain20,plain56,resnet20,resnet56",
        help="comma-separated registered names (default plain20,plain56,resnet20,resnet56)",
    )
    parser.add_argument(
        "--data", default="digits", help="digits | folder:PATH | cifar10:PATH | signs:PATH"
    )
    parser.add_argument("--epochs", type=int, help="default: per dataset (digits 30)")
    parser.add_argument(
        "--train-size", type=int, metavar="N", help="train on a seeded random N training images"
    )
    parser.add_argument(
        "--val-size",
        type=float,
        default=0.1,
        help="held-out part of a folder without val/: fraction or image count (default 0.1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="one seed for data order and init")
    parser.add_argument("--batch-size", type=int, help="default: the dataset recipe's")
    parser.add_argument("--lr", type=float, help="peak learning rate for a batch of 128")
    parser.add_argument("--precision", default="auto", help="auto, 32-true, bf16-mixed, 16-mixed")
    parser.add_argument("--accelerator", default="auto", help="auto, cpu or gpu")
    parser.add_argument(
        "--out", default="runs/compare", help="output folder (default runs/compare)"
    )


def print_epoch(model: str, row: dict) -> None:
    print(
        f"{model:<10} epoch {row['epoch']:>3}  training error {100 * (1 - row['train_acc']):5.1f}%"
        f"  held-out error {100 * (1 - row['val_acc']):5.1f}%  {row['epoch_time_s']:.0f}s",
        flush=True,
    )


def run(args: argparse.Namespace) -> int:
    from ..diagnostics.compare import CompareConfig, compare, render_table
    from .main import quiet_lightning

    quiet_lightning()

    config = CompareConfig(
        models=[name.strip() for name in args.models.split(",") if name.strip()],
        data=args.data,
        epochs=args.epochs,
        train_size=args.train_size,
        val_size=args.val_size,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        precision=args.precision,
        accelerator=args.accelerator,
        out=args.out,
    )
    result = compare(config, report=print_epoch)
    reused = [r.model for r in result.results if not r.trained_now]
    if reused:
        print(f"read the finished runs of {', '.join(reused)} from {result.out}")
    print(render_table(result))
    spreads = ", ".join(
        f"{m} {s.ratio:.3g}x ({s.blocks_ratio:.3g}x inside the blocks)"
        for m, s in result.init_spread.items()
    )
    print(f"gradient norm spread (max/min over layers) at initialisation: {spreads}")
    print(f"figures and tables in {result.out}: " + ", ".join(p.name for p in result.files))
    return 0
