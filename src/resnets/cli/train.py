"""`resnets train`: train a model and write a run directory."""

import argparse
import sys

HELP = "train a ResNet (default: resnet20 on the bundled digits)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="resnet20", help="registered name (see `resnets models`)"
    )
    parser.add_argument(
        "--data", default="digits", help="digits | folder:PATH | cifar10:PATH | signs:PATH"
    )
    parser.add_argument("--epochs", type=int, help="default: per dataset (digits 30)")
    parser.add_argument("--batch-size", type=int, help="global batch size over all devices")
    parser.add_argument("--lr", type=float, help="peak learning rate for a batch of 128")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--warmup-epochs", type=float)
    parser.add_argument("--schedule", choices=["cosine", "step"])
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--val-size",
        type=float,
        default=0.1,
        help="held-out part of a folder without val/: fraction or image count",
    )
    parser.add_argument("--image-size", type=int, help="resize images to this square side")
    parser.add_argument("--channels", type=int, choices=[1, 3], help="1 grey or 3 RGB (folders)")
    parser.add_argument("--strict", action="store_true", help="fail on unreadable files")
    parser.add_argument("--download", action="store_true", help="download CIFAR-10 if missing")
    parser.add_argument(
        "--precision",
        default="auto",
        help="auto (fastest the hardware has), 32-true, bf16-mixed, 16-mixed",
    )
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--accelerator", default="auto", help="auto, cpu or gpu")
    parser.add_argument("--devices", type=_devices, default=1, help="processes per machine")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--sync-batchnorm", action="store_true")
    parser.add_argument("--out", default="runs", help="folder that holds run directories")
    parser.add_argument("--name", help="run directory name (default: model-data-time)")
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=500,
        help="optimiser steps between mid-epoch checkpoints (0: epoch ends only)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN",
        help="continue an interrupted run from its newest checkpoint, with the "
        "settings it started with (--epochs may extend it)",
    )


def _devices(value: str) -> int | str:
    return value if value == "auto" else int(value)


def print_epoch(row: dict) -> None:
    from tqdm import tqdm  # writes above a running progress bar instead of through it

    tqdm.write(
        f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  "
        f"train acc {100 * row['train_acc']:5.1f}%  val loss {row['val_loss']:.4f}  "
        f"val acc {100 * row['val_acc']:5.1f}%  lr {row['lr']:.4f}  "
        f"{row['images_per_s']:,.0f} images/s  {row['epoch_time_s']:.1f}s",
    )


def run(args: argparse.Namespace) -> int:
    from ..train import TrainConfig, resume, train
    from .main import quiet_lightning

    quiet_lightning()

    if args.resume:
        result = resume(args.resume, report=print_epoch, epochs=args.epochs)
    else:
        names = {f for f in vars(TrainConfig()) if hasattr(args, f)}
        config = TrainConfig(**{name: getattr(args, name) for name in names})
        config.progress_bar = sys.stderr.isatty()
        result = train(config, report=print_epoch)
    print(
        f"{result.held_out_name} accuracy {100 * result.accuracy:.2f}% after "
        f"{len(result.rows)} epochs in {result.seconds:.0f}s; run saved to {result.run_dir}"
    )
    return 0
