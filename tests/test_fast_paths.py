"""The fast paths: folded batch norm computes the same function; the benchmark runs."""

import json

import pytest
import torch
from torch import nn

from resnets.benchmark import BASELINE, benchmark, render_table
from resnets.cli.main import main
from resnets.errors import UsageError


def randomize_norms(model: nn.Module) -> None:
    """Give every batch norm statistics and an affine map unlike a fresh one's (mean 0,
    variance 1, scale 1 or 0, shift 0), which would make folding nearly a no-op."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.normal_(0.0, 0.2, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
            module.bias.data.normal_(0.0, 0.2, generator=generator)
            assert module.weight.shape == (n,)


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_benchmark_returns_speeds_for_every_variant(mode):
    result = benchmark(
        "resnet20",
        mode=mode,
        batch_size=2,
        image_size=16,
        repeats=2,
        warmup=1,
        min_round_seconds=0.0,
        compile_model="no",
    )

    values = result.to_dict()
    for key in ("model", "mode", "batch_size", "image_size", "threads", "macs_per_image"):
        assert key in values
    assert values["peak_gflops"] > 0
    assert values["fastest_resnets"].startswith("resnets")
    names = [v.name for v in result.variants]
    assert names[0] == BASELINE
    assert any(v.resnets for v in result.variants)
    for variant in result.variants:
        assert variant.images_per_second > 0
        assert variant.best_images_per_second >= variant.images_per_second
        assert variant.gflops > 0 and 0 < variant.fraction_of_peak
        assert len(variant.step_seconds) == 2
    assert result.variant(BASELINE).ratio == pytest.approx(1.0)
    assert result.flops_per_image == 2 * result.macs_per_image * (3 if mode == "train" else 1)
    assert "resnets (" in render_table(result)


def test_benchmark_uses_torchvision_where_it_has_the_model():
    result = benchmark(
        "resnet18", batch_size=2, image_size=32, repeats=1, warmup=1, compile_model="no"
    )

    assert result.baseline.startswith("torchvision.models.resnet18")
    assert [v.resnets for v in result.variants] == [False, False, True, True]
    assert "onnxruntime" in result.variants[-1].name


def test_benchmark_command_writes_json(tmp_path, capsys):
    path = tmp_path / "speed.json"
    argv = ["benchmark", "resnet20", "--train", "--batch-size", "2", "--image-size", "16"]
    code = main([*argv, "--repeats", "1", "--compile", "no", "--json", str(path)])

    assert code == 0
    values = json.loads(path.read_text())
    assert values["mode"] == "train" and values["batch_size"] == 2
    assert all(v["images_per_second"] > 0 for v in values["variants"])
    assert "images/s" in capsys.readouterr().out


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "fast"},
        {"batch_size": 1, "mode": "train"},
        {"batch_size": 0},
        {"image_size": 4},
        {"repeats": 0},
        {"compile_model": "maybe"},
    ],
)
def test_benchmark_rejects_bad_options(options):
    with pytest.raises(UsageError):
        benchmark("resnet20", **options)


def test_benchmark_suggests_a_model_for_a_misspelt_name():
    with pytest.raises(UsageError, match="resnet20"):
        benchmark("resnet2O")


def test_a_model_that_fails_to_compile_is_left_out(monkeypatch, caplog):
    class Uncompilable(nn.Module):
        def forward(self, images):
            raise RuntimeError("no C++ compiler")

    def broken(model, *, freeze):
        return Uncompilable()

    monkeypatch.setattr("resnets.benchmark.compiled", broken)
    result = benchmark(
        "resnet20",
        batch_size=2,
        image_size=16,
        repeats=1,
        warmup=1,
        min_round_seconds=0.0,
        compile_model="yes",
    )

    assert not any(v.name.endswith("compiled") for v in result.variants)
    assert result.compile_seconds is None
    assert "no C++ compiler" in caplog.text


@pytest.mark.slow
def test_benchmark_times_the_compiled_model():
    result = benchmark("resnet20", batch_size=4, repeats=1, warmup=2, compile_model="yes")

    assert result.compile_seconds is not None and result.compile_seconds > 0
    assert result.variants[-1].name.endswith("compiled")
