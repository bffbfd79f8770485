"""`resnets train`: train a model and write a run directory."""

import argparse
import sys
from dataclasses import asdict, fields
from pathlib import Path

import yaml

HELP = "train a ResNet (default: resnet20 on the bundled digits)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="resnet20",
        help="registered name (see `resnets models`), or a model directory to train further "
        "(such as a run's model/ or the output of `resnets deepen`)",
    )
    parser.add_argument(
        "--weights",
        metavar="PATH",
        help="start from these weights: a torchvision, timm or resnets .pth/.pt/.safetensors "
        "file or model directory; a classifier of another size is replaced",
    )
    parser.add_argument(
        "--data", default="digits", help="digits | folder:PATH | cifar10:PATH | signs:PATH"
    )
    parser.add_argument(
        "--recipe",
        default="default",
        choices=["default", "fast"],
        help="fast: CIFAR-10-sized images, ResNet-20 at 89%% in 60 epochs (see README)",
    )
    parser.add_argument("--epochs", type=int, help="default: per dataset (digits 30)")
    parser.add_argument("--batch-size", type=int, help="global batch size over all devices")
    parser.add_argument("--lr", type=float, help="peak learning rate for a batch of 128")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--warmup-epochs", type=float)
    parser.add_argument("--schedule", choices=["cosine", "step"])
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument(
        "--ema-decay",
        type=float,
        help="evaluate and keep a moving average of the weights, updated every step (0: off)",
    )
    parser.add_argument(
        "--test-flip",
        action=argparse.BooleanOptionalAction,
        help="validate and predict on each image and its mirror image, logits averaged",
    )
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
    parser.add_argument(
        "--in-memory",
        action=argparse.BooleanOptionalAction,
        help="folders: decode every image once into memory (the default when they take at "
        "most a quarter of it, RESNETS_MEMORY_BUDGET_GB), or with --no-in-memory decode "
        "each batch's files in DataLoader workers",
    )
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
        "--set",
        dest="model_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model option (any ResNetConfig field), e.g. --set zero_init_residual=false",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="read settings from YAML (a run's config.yaml or --print-config output); "
        "flags given on the command line override it",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved settings as YAML, exit"
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


def config_from_args(args: argparse.Namespace):
    """Settings from --config, overridden by every flag whose value is not its default."""
    from ..errors import UsageError
    from ..train import TrainConfig

    values = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            where = getattr(error, "problem_mark", None)
            line = f" at line {where.line + 1}" if where else ""
            raise UsageError(
                f"{path} is not valid YAML{line}; expected settings such as `epochs: 30`, as "
                "`resnets train --print-config` writes them"
            ) from error
        if not isinstance(loaded, dict):
            raise UsageError(
                f"{path} should hold a mapping of settings, got {type(loaded).__name__}"
            )
        values = loaded.get("train", loaded)  # a run's config.yaml nests them under "train"
        if not isinstance(values, dict) or not isinstance(values.get("model_options") or {}, dict):
            raise UsageError(
                f"{path}: `train` and `model_options` should each hold a mapping of settings, "
                "as `resnets train --print-config` writes them"
            )
    options = dict(values.get("model_options") or {})
    options.update(parse_options(args.model_options))
    given = flags_given(args.command_argv)
    for name in (f.name for f in fields(TrainConfig)):
        if name == "model_options" or not hasattr(args, name):
            continue
        if name not in values or name in given:
            values[name] = getattr(args, name)
    values["model_options"] = options
    values["progress_bar"] = sys.stderr.isatty()
    return TrainConfig.from_dict(values)


def flags_given(argv: list[str]) -> set[str]:
    """The settings that `argv` (the words after `train`) names, whatever their values: a
    flag set to its default value still overrides the --config file."""
    probe = argparse.ArgumentParser(add_help=False)
    add_arguments(probe)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    named, _ = probe.parse_known_args(argv)
    return set(vars(named))


def parse_options(pairs: list[str]) -> dict:
    from ..errors import UsageError

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(
                f"--set expects KEY=VALUE, such as zero_init_residual=false; got {pair!r}"
            )
        options[key.strip()] = yaml.safe_load(value)
    return options


def run(args: argparse.Namespace) -> int:
    from ..train import resume, train
    from ..train.fit import check_config
    from .main import quiet_lightning

    quiet_lightning()

    if args.resume:
        ignored = sorted(flags_given(args.command_argv) - {"resume", "epochs"})
        if ignored:
            from ..errors import UsageError

            probe = argparse.ArgumentParser(add_help=False)
            add_arguments(probe)
            spelled = {a.dest: a.option_strings[0] for a in probe._actions if a.option_strings}
            flags = ", ".join(spelled.get(name, name) for name in ignored)
            raise UsageError(
                f"--resume continues a run with the settings it started with, so it takes "
                f"only --epochs; got {flags} as well. Drop them, or start a new run"
            )
        result = resume(args.resume, report=print_epoch, epochs=args.epochs)
    else:
        config = config_from_args(args)
        if args.print_config:
            check_config(config)  # print only settings that train would accept
            print(yaml.safe_dump(asdict(config), sort_keys=False), end="")
            return 0
        result = train(config, report=print_epoch)
    if not result.is_global_zero:
        return 0
    epochs = f"{len(result.rows)} epoch" + ("s" if len(result.rows) != 1 else "")
    print(
        f"{result.held_out_name} accuracy {100 * result.accuracy:.2f}% after {epochs} in "
        f"{result.seconds:.0f}s; run saved to {result.run_dir}"
    )
    return 0
