"""Diagnostics: gradient recording, the gradients and compare commands, identity blocks."""

import csv
import math
import re

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn

import resnets
from resnets.cli.main import main
from resnets.data.datasets import Dataset, ImageSet
from resnets.diagnostics import GradientMonitor, GradientRecorder, find_layers
from resnets.diagnostics.deepen import deepen, logit_difference
from resnets.diagnostics.gradients import GradientsConfig, run_gradients
from resnets.errors import UsageError
from resnets.weights import load_model_dir, save_model_dir


class InPlaceNet(nn.Module):
    """A residual step written the way that breaks activation hooks: everything in place."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu_(self.conv1(x))
        out = self.conv2(x)
        out += x
        out = F.relu(out, inplace=True)
        return self.head(out.mean((2, 3)))


def small_model(name: str) -> nn.Module:
    if name == "inplace":
        return InPlaceNet()
    return resnets.create_model(
        name, num_classes=3, in_channels=1, blocks_per_stage=(1, 1, 1), zero_init_residual=False
    )


def direct_norms(model: nn.Module) -> dict[str, float]:
    """Each conv or linear layer's gradient norm, straight from p.grad."""
    norms = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            squares = sum(p.grad.pow(2).sum() for p in module.parameters(recurse=False))
            norms[name] = math.sqrt(float(squares))
    return norms


def synthetic_dataset(count: int = 24, side: int = 16) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 1, side, side), dtype=torch.uint8, generator=generator)
    labels = torch.arange(count) % 3
    split = ImageSet(images, labels)
    return Dataset("synthetic", ["a", "b", "c"], split, split, "test", flip=False, crop_padding=2)


@pytest.mark.parametrize("name", ["inplace", "plain20", "resnet20"])
def test_recorded_gradient_norms_equal_those_of_p_grad(name):
    torch.manual_seed(0)
    model = small_model(name)
    recorder = GradientRecorder(model)
    recorder.start_step(0)
    images, labels = torch.randn(6, 1, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    F.cross_entropy(model(images), labels).backward()
    recorder.record_gradients()

    recorded = {row["layer"]: row["grad_norm"] for row in recorder.layer_rows}
    expected = direct_norms(model)
    assert recorded.keys() == expected.keys()
    for layer, value in expected.items():
        assert value > 0
        assert recorded[layer] == pytest.approx(value, rel=1e-5), layer


def test_branch_std_is_taken_before_the_in_place_relu():
    # A plain block applies ReLU in place to its branch's output right after the hook.
    model = small_model("plain20")
    block = model.blocks()[0]
    seen = []
    block.branch.register_forward_hook(lambda m, i, out: seen.append(out.detach().clone()))
    recorder = GradientRecorder(model)
    recorder.start_step(0)
    F.cross_entropy(model(torch.randn(4, 1, 16, 16)), torch.tensor([0, 1, 2, 0])).backward()
    recorder.record_gradients()

    row = next(r for r in recorder.block_rows if r["block"] == "stages.0.0")
    assert (seen[0] < 0).any()  # so a std taken after the ReLU would differ
    assert row["branch_std"] == pytest.approx(seen[0].std().item(), rel=1e-5)


def test_update_ratio_is_the_step_relative_to_the_weight():
    model = small_model("resnet20")
    recorder = GradientRecorder(model, every=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)  # update = lr * grad exactly
    for step in range(3):
        recorder.start_step(step)
        F.cross_entropy(model(torch.randn(4, 1, 16, 16)), torch.tensor([0, 1, 2, 0])).backward()
        recorder.record_gradients()
        optimizer.step()
        optimizer.zero_grad()
        recorder.record_update()

    assert sorted({row["step"] for row in recorder.layer_rows}) == [0, 2]
    for row in recorder.layer_rows:
        expected = 0.05 * row["grad_norm"] / row["weight_norm"]
        assert row["update_ratio"] == pytest.approx(expected, rel=1e-4)


def test_layers_follow_the_paper_depth():
    layers = find_layers(resnets.create_model("resnet20"))
    main_path = [layer for layer in layers if layer.main_path]
    assert [layer.depth for layer in main_path] == list(range(1, 21))
    assert main_path[0].block == "stem" and main_path[-1].block == "head"
    assert main_path[1].block == "stages.0.0"


class TinyModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = small_model("resnet20")

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self.model(images), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class DirectNorms(L.Callback):
    """Takes each layer's gradient norm straight from p.grad where the monitor reads it."""

    def __init__(self) -> None:
        self.by_step: dict[int, dict[str, float]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.by_step[trainer.global_step] = direct_norms(pl_module.model)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_lightning_callback_records_p_grad_once_per_sampled_step(tmp_path, precision):
    data = torch.utils.data.TensorDataset(torch.randn(20, 1, 16, 16), torch.arange(20) % 3)
    monitor, direct = GradientMonitor(every=2, out=tmp_path), DirectNorms()
    trainer = L.Trainer(
        max_steps=5,
        accelerator="cpu",
        precision=precision,
        callbacks=[monitor, direct],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TinyModule(), torch.utils.data.DataLoader(data, batch_size=4))

    with open(tmp_path / "gradients.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    layers = len(find_layers(small_model("resnet20")))
    assert [int(r["step"]) for r in rows[::layers]] == [0, 2, 4]
    assert len(rows) == 3 * layers
    for row in rows:
        expected = direct.by_step[int(row["step"])][row["layer"]]
        assert float(row["grad_norm"]) == pytest.approx(expected, rel=1e-5)
        assert float(row["update_ratio"]) > 0


def write_image_folder(root, classes=("a", "b"), per_class=6, side=16):
    generator = torch.Generator().manual_seed(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (side, side, 3), dtype=torch.uint8, generator=generator)
            Image.fromarray(pixels.numpy()).save(root / name / f"{i}.png")


def test_gradients_command_writes_one_row_per_sampled_step_and_layer(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE_DIR", "")
    write_image_folder(tmp_path / "images")
    out = tmp_path / "out"
    code = main([
        "gradients", "--model", "plain20", "--data", f"folder:{tmp_path / 'images'}",
        "--steps", "4", "--every", "2", "--val-size", "2", "--batch-size", "4", "--out", str(out),
    ])  # fmt: skip

    assert code == 0
    with open(out / "gradients.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == [
        "step", "layer", "depth", "block", "grad_norm", "weight_norm", "update_ratio",
    ]  # fmt: skip
    # steps 0 and 2 by --every, and 3 because it is the last
    assert sorted({int(r["step"]) for r in rows}) == [0, 2, 3]
    assert len(rows) == 3 * 20
    assert {(r["step"], r["layer"]) for r in rows}.__len__() == len(rows)
    for figure in ("gradient_norm_vs_step.png", "gradient_norm_by_depth.png", "branch_std.png"):
        assert (out / figure).stat().st_size > 10_000


def test_gradients_without_batch_norm_measure_the_plain_net_at_init(tmp_path):
    config = GradientsConfig(
        model="plain20", steps=1, batch_norm=False, init="pytorch", out=str(tmp_path)
    )
    result = run_gradients(config, dataset=synthetic_dataset())

    assert result.steps_run == 1
    assert all(".norm" not in r["layer"] for r in result.layer_rows)
    # PyTorch's default init shrinks the signal layer by layer: early gradients vanish.
    assert result.spread.larger_end == "late"
    assert result.spread.ratio > 10


def trained_a_little(model: nn.Module, steps: int = 3) -> nn.Module:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        images = torch.randn(8, 1, 16, 16, generator=generator)
        labels = torch.randint(0, 3, (8,), generator=generator)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def test_spread_is_reported_over_all_layers_without_the_classifier_and_inside_blocks():
    from resnets.diagnostics.gradients import gradient_spread

    norms = {"stem.0.conv": 8.0, "stages.0.0.branch.0.conv": 2.0}
    norms |= {"stages.0.0.shortcut.0.conv": 100.0, "stages.1.0.branch.0.conv": 0.5, "head": 16.0}
    rows = [
        {"step": 0, "layer": name, "depth": depth, "grad_norm": norm, "block": name[:10]}
        for depth, (name, norm) in enumerate(norms.items(), start=1)
    ]
    rows[0]["block"], rows[-1]["block"] = "stem", "head"
    spread = gradient_spread(rows)
    assert (spread.layers, spread.ratio, spread.hidden_ratio) == (4, 32.0, 16.0)  # no shortcut
    assert (spread.block_layers, spread.blocks_ratio) == (2, 4.0)
    assert "4x over the 2 convolutions inside the blocks" in spread.describe()


def test_deepened_model_keeps_its_logits_and_trains_on():
    torch.manual_seed(0)
    model = trained_a_little(small_model("resnet20"))
    deeper = deepen(model, 2)
    images = torch.randn(5, 1, 16, 16)

    assert deeper.config.blocks_per_stage == (1, 1, 3)
    assert logit_difference(model, deeper, images) <= 1e-5
    new_scale = deeper.blocks()[-1].last_norm().weight
    assert torch.count_nonzero(new_scale) == 0
    first_conv = deeper.blocks()[-1].branch[0].conv.weight
    assert first_conv.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.1)  # He

    optimizer = torch.optim.SGD(deeper.parameters(), lr=0.05)
    labels = torch.tensor([0, 1, 2, 0, 1])
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(deeper(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] != losses[0]
    assert new_scale.abs().max().item() > 0


def test_deepen_command_saves_a_model_buildable_from_its_config(tmp_path):
    torch.manual_seed(0)
    model = trained_a_little(small_model("resnet20")).eval()
    save_model_dir(model, tmp_path / "run" / "model", architecture="resnet20")

    assert main(["deepen", str(tmp_path / "run"), "--blocks", "1", "--stage", "2"]) == 0
    deeper = load_model_dir(tmp_path / "run" / "deepened-1")
    assert deeper.config.blocks_per_stage == (1, 2, 1)
    assert logit_difference(model, deeper, torch.randn(3, 1, 16, 16)) <= 1e-5


def test_deepen_refuses_a_plain_model():
    with pytest.raises(UsageError, match="residual"):
        deepen(small_model("plain20"), 1)


def test_compare_does_not_retrain_finished_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNETS_CACHE_DIR", "")
    write_image_folder(tmp_path / "images", per_class=8)
    out = tmp_path / "out"
    args = [
        "compare", "--models", "plain20,resnet20", "--data", f"folder:{tmp_path / 'images'}",
        "--epochs", "1", "--train-size", "8", "--val-size", "4", "--batch-size", "4",
        "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    for name in ("plain20", "resnet20"):
        assert (out / name / "model" / "config.json").is_file()
        run_config = yaml.safe_load((out / name / "config.yaml").read_text())
        assert run_config["dataset"]["train_size"] == 8
        assert run_config["train"]["model_options"] == {"zero_init_residual": False}
    for name in ("error_curves.png", "init_gradients.png", "results.csv", "results.md"):
        assert (out / name).is_file()
    with open(out / "results.csv", newline="") as stream:
        first = list(csv.DictReader(stream))
    assert [row["model"] for row in first] == ["plain20", "resnet20"]

    from resnets.train import fit

    calls = []
    monkeypatch.setattr(fit, "train", lambda *a, **k: calls.append(a) or pytest.fail("retrained"))
    capsys.readouterr()
    assert main(args) == 0
    assert calls == []
    printed = capsys.readouterr().out
    assert "read the finished runs of plain20, resnet20" in printed
    assert re.search(r"plain20 [\d.e+]+x \([\d.e+]+x inside the blocks\), resnet20", printed)
    with open(out / "results.csv", newline="") as stream:
        assert list(csv.DictReader(stream)) == first

    changed = [a if a != "1" else "2" for a in args]  # --epochs 2 cannot reuse 1-epoch runs
    assert main(changed) == 2
