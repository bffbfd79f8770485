"""`resnets models`: every registered architecture."""

import argparse

HELP = "list every registered architecture with its depth, parameters and description"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'resnet*'")


def run(args: argparse.Namespace) -> int:
    from ..models.registry import list_models, model_entry
    from ..summary import count_parameters_of

    names = list_models(args.pattern)
    if not names:
        from ..errors import UsageError, closest

        raise UsageError(
            f"no registered model matches {args.pattern!r}; try a shell pattern such as "
            f"'resnet*' or 'plain*', or no pattern for all.{closest(args.pattern, list_models())}"
        )
    print(f"{'name':<20} {'depth':>5} {'params':>12}  description")
    for name in names:
        entry = model_entry(name)
        params = count_parameters_of(entry.config)
        print(f"{name:<20} {entry.depth:>5} {params:>12,}  {entry.description}")
    return 0
