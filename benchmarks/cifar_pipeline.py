"""CIFAR ResNet-20 training speed with the data pipeline included, in images/s.

Four ways of running the same number of SGD steps on the CIFAR-10 image folder:

  (a) torchvision-style: ImageFolder + DataLoader (2 workers) decoding JPEGs and applying
      RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize per image;
      the model in float32 NCHW.
  (b) resnets: the folder decoded once into a uint8 tensor in memory (cached on disk by
      `resnets.data.load_dataset`), batches cropped, flipped and normalised as whole
      tensors (`random_crop_flip`, `normalize`), the model channels-last under bf16 autocast,
      as `resnets train` runs it.
  (c) resnets on a random tensor of the same shape: the model's own speed, with no data
      pipeline at all. (b) / (c) is the share of the model's speed the pipeline leaves.
  (d) resnets on a folder too large for memory (`--no-in-memory`): DataLoader workers
      decode each batch's files, then (b)'s batch augmentation and model.

The variants run round-robin in one process (each round runs every variant in turn) and
each variant's speed is its median over the rounds, so a neighbour's job slows all three
alike. At the start of each round the DataLoader gets fresh workers and the first
`--untimed` steps are not timed, for every variant: they hold the batches the workers
prefetched while another variant was being timed, which would otherwise come for free.
Worker start-up (once an epoch in real training) is therefore not counted.

Usage (the data: `mkdir -p /tmp/cifar10 && tar -xzf cifar10-train-jpg.tar.gz -C /tmp/cifar10`):

    python benchmarks/cifar_pipeline.py --data /tmp/cifar10/train [--json FILE]
"""

import argparse
import itertools
import json
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

import resnets
from resnets.data import load_dataset
from resnets.data.augment import normalize, random_crop_flip
from resnets.hardware import cpu_has_bf16
from resnets.models import ResNet, model_config
from resnets.summary import summarize
from resnets.train.datamodule import ImageDataModule

MODEL = "resnet20"
# The CIFAR-10 training set's per-channel mean and std, as torchvision examples use them.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/cifar10/train"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--untimed", type=int, default=4, help="untimed steps opening a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for (a)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def torchvision_style(args: argparse.Namespace) -> tuple[Callable[[], Iterator], Callable]:
    """(a): per-image decoding and transforms in DataLoader workers, float32 NCHW."""
    augment = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
        ]
    )
    folder = torchvision.datasets.ImageFolder(str(args.data), transform=augment)
    loader = DataLoader(
        folder, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True
    )
    model = resnets.create_model(MODEL).train()
    optimizer = sgd(model)

    def step(batch) -> None:
        images, labels = batch
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return lambda: iter(loader), step


def resnets_step(bf16: bool) -> tuple[torch.nn.Module, Callable]:
    """A channels-last ResNet-20 and its SGD step on a float batch, as `resnets train` runs."""
    model = resnets.create_model(MODEL).train().to(memory_format=torch.channels_last)
    optimizer = sgd(model)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return model, step


def resnets_pipeline(
    args: argparse.Namespace, bf16: bool, in_memory: bool = True
) -> tuple[Callable, Callable, float]:
    """(b): uint8 batches from memory, augmented and normalised a batch at a time; (d) with
    `in_memory=False`: the same, each batch decoded from its files by DataLoader workers."""
    start = time.perf_counter()
    dataset = load_dataset(f"folder:{args.data}", in_memory=in_memory)
    load_seconds = time.perf_counter() - start
    loader = ImageDataModule(dataset, args.batch_size).train_dataloader()
    mean, std = torch.tensor(dataset.mean), torch.tensor(dataset.std)
    _, train = resnets_step(bf16)

    def step(batch) -> None:
        images, labels = batch
        images = random_crop_flip(images, dataset.crop_padding, dataset.flip)
        train(normalize(images, mean, std, channels_last=True), labels)

    return lambda: forever(loader), step, load_seconds


def forever(loader: DataLoader) -> Iterator:
    """Epoch after epoch of `loader`'s batches."""
    while True:
        yield from loader


def resnets_random(args: argparse.Namespace, bf16: bool) -> tuple[Callable, Callable]:
    """(c): the same model and step on one random batch, already normalised."""
    images = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.batch_size,))
    _, train = resnets_step(bf16)
    return lambda: itertools.repeat((images, labels)), lambda batch: train(*batch)


def time_round(batches: Callable[[], Iterator], step: Callable, args) -> float:
    """Seconds per step over `args.steps` timed steps, after `args.untimed` untimed ones."""
    iterator = batches()
    for _ in range(args.untimed):
        step(next(iterator))
    start = time.perf_counter()
    for _ in range(args.steps):
        step(next(iterator))
    seconds = (time.perf_counter() - start) / args.steps
    del iterator  # shuts DataLoader workers down, so they do not slow the next variant
    return seconds


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bf16 = cpu_has_bf16()
    precision = "bf16" if bf16 else "fp32"
    tv_batches, tv_step = torchvision_style(args)
    mem_batches, mem_step, load_seconds = resnets_pipeline(args, bf16)
    file_batches, file_step, _ = resnets_pipeline(args, bf16, in_memory=False)
    variants = {
        "(a) torchvision-style DataLoader, fp32 NCHW": (tv_batches, tv_step),
        f"(b) resnets in-memory uint8, channels-last {precision}": (mem_batches, mem_step),
        f"(c) resnets random tensors, channels-last {precision}": resnets_random(args, bf16),
        f"(d) resnets from files (workers), channels-last {precision}": (file_batches, file_step),
    }
    seconds = {name: [] for name in variants}
    for round_index in range(args.rounds):
        for name, (batches, step) in variants.items():
            seconds[name].append(time_round(batches, step, args))
        print(f"round {round_index + 1} of {args.rounds} done", flush=True)

    with torch.device("meta"):
        macs = summarize(ResNet(model_config(MODEL))).total_macs
    speeds = {name: args.batch_size / statistics.median(s) for name, s in seconds.items()}
    names = list(variants)
    report = {
        "model": MODEL,
        "batch_size": args.batch_size,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "workers": args.workers,
        "load_dataset_seconds": load_seconds,
        "images_per_second": speeds,
        "step_seconds": seconds,
        "gflops": {name: 6 * macs * speed / 1e9 for name, speed in speeds.items()},
        "resnets_vs_torchvision": speeds[names[1]] / speeds[names[0]],
        "pipeline_share_of_model_speed": speeds[names[1]] / speeds[names[2]],
        "from_files_share_of_model_speed": speeds[names[3]] / speeds[names[2]],
    }
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def print_report(report: dict) -> None:
    print(
        f"\n{report['model']} training, batch {report['batch_size']}, {report['steps_per_round']}"
        f" timed steps x {report['rounds']} rounds, {report['threads']} threads"
    )
    width = max(len(name) for name in report["images_per_second"])
    print(f"{'variant'.ljust(width)}  images/s  GFLOP/s")
    for name, speed in report["images_per_second"].items():
        print(f"{name.ljust(width)}  {speed:8.1f}  {report['gflops'][name]:7.1f}")
    print(f"load_dataset (decode or read the cache): {report['load_dataset_seconds']:.1f} s")
    print(f"resnets (b) / torchvision-style (a): {report['resnets_vs_torchvision']:.2f}x")
    print(
        f"in-memory pipeline (b) / random tensors (c): "
        f"{100 * report['pipeline_share_of_model_speed']:.0f}%"
    )
    print(
        f"from files (d) / random tensors (c): "
        f"{100 * report['from_files_share_of_model_speed']:.0f}%"
    )


if __name__ == "__main__":
    main()
