"""`resnets evaluate`: accuracy, per-class accuracy and a confusion matrix for a trained model."""

import argparse
import json
import re
from pathlib import Path

from .predict_options import add_inference_arguments, inference_options

HELP = "evaluate a trained run on labelled data: top-1, top-5, per class, confusion matrix"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (or model directory)")
    parser.add_argument(
        "--data", help="dataset spec (default: the images the run held out from training)"
    )
    parser.add_argument(
        "--out",
        help="folder for confusion.png and predictions.csv (default: RUN/evaluation, or "
        "RUN/evaluation-NAME with --data, NAME taken from the data's name)",
    )
    add_inference_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from ..inference.evaluate import evaluate, evaluation_split, plot_confusion, write_predictions
    from ..inference.predictor import Predictor, model_dir_of

    predictor = Predictor(args.run, **inference_options(args))
    if args.data:
        spec, split = args.data, evaluation_split(args.data, predictor)
    else:
        spec, split = _run_held_out(args.run, predictor)
    result = evaluate(predictor, split)
    out = Path(args.out) if args.out else evaluation_dir(model_dir_of(args.run).parent, args.data)
    out.mkdir(parents=True, exist_ok=True)
    names = predictor.class_names
    plot_confusion(result, names, out / "confusion.png", f"Confusion matrix on {spec}")
    write_predictions(result, names, out / "predictions.csv")
    if args.json:
        print(
            json.dumps(
                {
                    "data": spec,
                    "images": result.count,
                    "top1": result.top1,
                    "top5": result.top5,
                    "per_class": result.per_class,
                    "confusion": result.confusion.tolist(),
                    "out": str(out),
                },
                indent=2,
            )
        )
        return 0
    print(f"{'class':<16} {'accuracy':>9}")
    for name, accuracy in result.per_class.items():
        shown = "no images" if accuracy is None else f"{100 * accuracy:8.1f}%"
        print(f"{name:<16} {shown:>9}")
    print(
        f"{result.count} images from {spec}: top-1 {100 * result.top1:.2f}%, "
        f"top-5 {100 * result.top5:.2f}%; confusion.png and predictions.csv written to {out}"
    )
    return 0


def evaluation_dir(run_dir: Path, data: str | None) -> Path:
    """RUN/evaluation for the run's own held-out images; RUN/evaluation-NAME for other
    data, so that it never overwrites them: `folder:~/photos` gives `evaluation-photos`,
    `folder:~/photos/test` `evaluation-photos-test`, `cifar10:PATH` `evaluation-cifar10`."""
    if not data:
        return run_dir / "evaluation"
    kind, _, path = data.partition(":")
    name = kind
    if kind == "folder" and path:
        folder = Path(path).expanduser().resolve()
        generic = folder.name.lower() in ("train", "val", "validation", "test")
        name = f"{folder.parent.name}-{folder.name}" if generic else folder.name
    name = re.sub(r"[^\w.-]+", "-", name).strip("-.") or kind
    return run_dir / f"evaluation-{name}"


def _run_held_out(run: str, predictor):
    """The images the run held out from training, split exactly as training split them (same
    data, held-out size and seed), so that evaluation never scores a training image."""
    from ..errors import UsageError
    from ..inference.evaluate import held_out_of
    from ..inference.predictor import model_dir_of
    from ..train.fit import TrainConfig, load_training_data, read_run_config

    try:
        config = TrainConfig.from_dict(read_run_config(model_dir_of(run).parent)["train"])
    except FileNotFoundError as error:
        raise UsageError(f"{run} has no run config to take the data from; pass --data") from error
    config.strict = False  # evaluation skips what training skipped
    dataset = load_training_data(config)
    return f"{config.data} (held-out split)", held_out_of(dataset, config.data, predictor)
