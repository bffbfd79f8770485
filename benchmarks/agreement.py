"""Does the fast inference path change any answers? Top-1 agreement with float32 eval.

Classifies the held-out images of a finished run twice: with `Predictor`'s defaults
(batch norm folded into the convs, channels-last, bf16 where the CPU has it) and with the
saved model as most people run it (unfolded, float32, NCHW, eval mode). Prints how often
the top-1 classes agree and each path's accuracy.

    python benchmarks/agreement.py runs/<run> [--count 2000]
"""

import argparse

import torch

from resnets.data.augment import normalize
from resnets.data.datasets import load_dataset
from resnets.inference import Predictor
from resnets.train.fit import read_run_config
from resnets.weights import load_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished run directory")
    parser.add_argument("--count", type=int, default=2000, help="held-out images to classify")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"])
    args = parser.parse_args()

    settings = read_run_config(args.run)["train"]
    dataset = load_dataset(
        settings["data"],
        image_size=settings["image_size"],
        channels=settings["channels"],
        val_size=settings["val_size"],
        seed=settings["seed"],
    )
    # A seeded sample: the held-out split is in file order, that is, class by class.
    pick = torch.randperm(len(dataset.held_out), generator=torch.Generator().manual_seed(0))
    images = dataset.held_out.images[pick[: args.count]]
    labels = dataset.held_out.labels[pick[: args.count]]

    # The flip is compared separately: here both paths see each image once.
    fast = Predictor(args.run, backend=args.backend, test_flip=False)
    reference = load_model_dir(f"{args.run}/model").eval()
    with torch.inference_mode():
        fast_top1 = fast.logits(images).argmax(1)
        x = normalize(images, fast.mean, fast.std, channels_last=False)
        reference_top1 = torch.cat([reference(batch).argmax(1) for batch in x.split(256)])

    agree = (fast_top1 == reference_top1).float().mean().item()
    print(f"{len(images)} held-out images of {settings['data']}")
    print(
        f"fast path ({fast.backend}, {fast.dtype}, folded"
        f"{', channels-last' if fast.backend == 'torch' else ''}) accuracy "
        f"{100 * (fast_top1 == labels).float().mean():.2f}%"
    )
    print(f"float32 NCHW eval accuracy {100 * (reference_top1 == labels).float().mean():.2f}%")
    print(f"top-1 agreement {100 * agree:.2f}% ({(fast_top1 != reference_top1).sum()} differ)")


if __name__ == "__main__":
    main()
