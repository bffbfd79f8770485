"""The `resnets` command: argument parsing and output; the work happens in the library.

Each command is a module of this package with `HELP`, `add_arguments(parser)` and
`run(args) -> int`. Errors the user caused print as one line on stderr (exit 2 for bad
usage, 1 for a failed run); `--debug` shows the traceback. Ctrl-C prints one line too
(exit 130), whenever it comes.
"""

import argparse
import importlib
import logging
import sys

COMMANDS = [
    "train",
    "evaluate",
    "predict",
    "models",
    "summary",
    "benchmark",
    "gradients",
    "compare",
    "deepen",
    "export",
]


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake reported in one line instead of the usage block and a line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="resnets",
        description="Build, train, understand and serve Residual Networks.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parser.set_defaults(commands={})  # each command's parser, to report its own mistakes
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"resnets.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"resnets.cli.{name}":
                raise
            continue  # a command not built yet
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        sub.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
        parser.get_default("commands")[name] = sub
    return parser


def quiet_lightning() -> None:
    """Silence Lightning's notes on devices, tips and stopping: noise at the command line.

    Call after Lightning is imported, since importing it resets its loggers' levels.
    """
    if logging.getLogger("resnets").getEffectiveLevel() > logging.DEBUG:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _own_words(error: BaseException) -> str:
    """The error's message; for one raised in a DataLoader worker, which PyTorch re-raises
    with the worker's traceback in its message, only the original message."""
    message = str(error)
    if message.startswith("Caught ") and "\nOriginal Traceback" in message:
        message = message.rstrip().splitlines()[-1].partition(": ")[2]
    return message


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # while Python imports torch, say, before a command runs
        print("resnets: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the command they were given to: "resnets evaluate: error: ..."
        args.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    args.command_argv = argv[argv.index(args.command) + 1 :]  # the words after the command
    from ..runs import launched_rank_zero

    # The other processes of a data-parallel run would repeat each of rank zero's notes.
    quiet = logging.ERROR if not launched_rank_zero() else logging.INFO
    logging.basicConfig(
        level=logging.DEBUG if args.debug else quiet,
        format="%(message)s",
        stream=sys.stderr,
    )
    from ..errors import ResnetsError, Stopped, UsageError

    try:
        return args.handler(args) or 0
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except Stopped as stopped:
        print(f"resnets {args.command}: {stopped}", file=sys.stderr)
        return 128 + stopped.signum
    except (ResnetsError, OSError) as error:  # OSError: missing, unreadable, unwritable files
        if args.debug:
            raise
        print(f"resnets {args.command}: error: {_own_words(error)}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())
