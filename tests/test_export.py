"""Export and model directories: ONNX, torch.export, TorchScript, torchvision, the hub layout."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torchvision
from torch import nn

import resnets
from resnets import hub
from resnets.cli.main import main
from resnets.errors import DataError, UsageError
from resnets.inference import export
from resnets.inference.export import check_format, export_model, export_run

CLASS_NAMES = [f"class{i}" for i in range(10)]


def randomise_norms(model: nn.Module) -> nn.Module:
    """Distinct batch-norm statistics and affine values for every norm.

    Freshly built models zero the last norm of each block, so their residual branches add
    nothing; with distinct values a wrong or missing layer in an export shows in the logits.
    """
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(0.1 * torch.randn(n, generator=generator))
    return model


def saved_model(tmp_path, name: str, side: int) -> tuple[resnets.ResNet, object]:
    """A random-weight model with 10 classes, saved as a run directory's model/ folder."""
    model = randomise_norms(resnets.create_model(name, num_classes=10))
    resnets.save_model_dir(
        model,
        tmp_path / "run" / "model",
        architecture=name,
        class_names=CLASS_NAMES,
        preprocessing={
            "image_size": [side, side],
            "channels": 3,
            "mean": [0.4] * 3,
            "std": [0.2] * 3,
        },
    )
    return model.eval(), tmp_path / "run"


def images(n: int, side: int) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(100 + n))


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


@pytest.mark.parametrize(
    ("name", "side", "fold"), [("resnet18", 64, False), ("resnet20", 32, True)]
)
def test_onnx_export_runs_in_onnx_runtime_with_pytorch_logits(tmp_path, name, side, fold):
    model, run = saved_model(tmp_path, name, side)

    result = export_run(run, "onnx", fold=fold)

    assert result.path == run / "export" / "model.onnx"
    assert result.max_difference <= 1e-4
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = images(n, side)
        (got,) = session.run(None, {"images": x.numpy()})
        assert got.shape == (n, 10)
        assert np.abs(got - logits(model, x).numpy()).max() <= 1e-4
    metadata = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert json.loads(metadata["class_names"]) == CLASS_NAMES
    assert json.loads(metadata["image_size"]) == [side, side]
    assert json.loads(metadata["mean"]) == [0.4] * 3
    assert json.loads(metadata["std"]) == [0.2] * 3
    assert metadata["architecture"] == name


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated
@pytest.mark.parametrize("format", ["torch-export", "torchscript"])
def test_torch_formats_round_trip(tmp_path, format):
    model, run = saved_model(tmp_path, "resnet20", 32)

    suffix = ".pt2" if format == "torch-export" else ".pt"
    result = export_run(run, format, tmp_path / "out" / f"model{suffix}")

    if format == "torch-export":
        loaded = torch.export.load(result.path).module()
    else:
        loaded = torch.jit.load(str(result.path))
    x = images(3, 32)  # a batch size the export was not traced or checked with
    assert (logits(model, x) - loaded(x)).abs().max().item() <= 1e-5


def test_torchvision_export_loads_into_torchvision_resnet18(tmp_path):
    model = randomise_norms(resnets.create_model("resnet18", num_classes=10))
    path = tmp_path / "resnet18.pth"

    result = export_model(model, path, "torchvision", image_size=(64, 64))

    reference = torchvision.models.resnet18(num_classes=10)
    reference.load_state_dict(torch.load(path, weights_only=True))
    x = images(2, 64)
    assert (logits(model, x) - logits(reference, x)).abs().max().item() <= 1e-5
    assert result.loaded_with.startswith("torchvision.models.resnet18(num_classes=10)")


def test_an_export_that_does_not_match_keeps_the_previous_file(tmp_path, monkeypatch):
    model = resnets.create_model("resnet20")
    path = tmp_path / "model.pt"
    path.write_text("a good earlier export")

    def drifting_writer(exported, target, example):
        target.write_text("a bad export")
        return "test", lambda x: exported(x) + 1e-3

    monkeypatch.setitem(export.WRITERS, "torchscript", drifting_writer)

    with pytest.raises(export.ExportError, match="differ from PyTorch's by 0.001"):
        export_model(model, path, "torchscript")
    assert path.read_text() == "a good earlier export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_model_directory_loads_in_a_fresh_process(tmp_path):
    model, run = saved_model(tmp_path, "resnet20", 32)
    x = images(2, 32)
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import json, sys, torch, resnets\n"
        "x = torch.load(sys.argv[2])\n"
        "with torch.no_grad():\n"
        "    created = resnets.create_model(sys.argv[1]).eval()(x)\n"
        "    pretrained = resnets.from_pretrained(sys.argv[1]).eval()(x)\n"
        "print(json.dumps([created.tolist(), pretrained.tolist()]))\n"
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}  # nothing may download

    process = subprocess.run(
        [sys.executable, "-c", script, str(run / "model"), str(tmp_path / "x.pt")],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )

    assert process.returncode == 0, process.stderr
    created, pretrained = (torch.tensor(v) for v in json.loads(process.stdout))
    expected = logits(model, x)
    assert (created - expected).abs().max().item() <= 1e-5
    assert (pretrained - expected).abs().max().item() <= 1e-5


def test_from_pretrained_accepts_a_run_directory_and_options(tmp_path):
    _, run = saved_model(tmp_path, "resnet20", 32)

    model = resnets.from_pretrained(run, zero_init_residual=False)

    assert model.config.num_classes == 10
    assert model.config.zero_init_residual is False


def test_from_pretrained_downloads_a_hub_repository(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")

    model, run = saved_model(tmp_path, "resnet20", 32)
    requests = []

    def snapshot_download(repo_id, **options):
        requests.append((repo_id, options))
        return str(run / "model")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)

    loaded = resnets.from_pretrained("someone/resnet20-shapes", revision="v1")

    x = images(2, 32)
    assert (logits(loaded, x) - logits(model, x)).abs().max().item() <= 1e-6
    assert requests[0][0] == "someone/resnet20-shapes"
    assert requests[0][1]["revision"] == "v1"


def test_from_pretrained_offline_says_why(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))

    with pytest.raises(DataError, match="HF_HUB_OFFLINE"):
        resnets.from_pretrained("someone/not-downloaded")


def test_from_pretrained_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import raises ImportError

    with pytest.raises(UsageError, match="pip install huggingface_hub"):
        resnets.from_pretrained("someone/resnet20-shapes")


def test_from_pretrained_of_an_architecture_name_points_to_create_model():
    with pytest.raises(UsageError, match="create_model"):
        resnets.from_pretrained("resnet20")


def test_push_to_hub_writes_a_model_card_and_uploads_the_model(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")

    _, run = saved_model(tmp_path, "resnet20", 32)
    calls = []
    monkeypatch.setattr(
        huggingface_hub, "create_repo", lambda *a, **k: calls.append(("create", a, k))
    )
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **k: calls.append(("upload", k)))

    hub.push_to_hub(run, "someone/resnet20-shapes", private=True)

    card = (run / "model" / "README.md").read_text()
    assert "resnet20" in card and "`class9`" in card and "[0.4, 0.4, 0.4]" in card
    assert "resnets.from_pretrained('someone/resnet20-shapes')" in card
    assert calls[0] == (
        "create",
        ("someone/resnet20-shapes",),
        {"token": None, "private": True, "exist_ok": True},
    )
    upload = calls[1][1]
    assert upload["repo_id"] == "someone/resnet20-shapes"
    assert upload["folder_path"] == run / "model"
    assert set(upload["allow_patterns"]) == {"config.json", "model.safetensors", "README.md"}


def test_push_to_hub_errors_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="run or model directory"):
        hub.push_to_hub(tmp_path / "missing", "someone/x")
    _, run = saved_model(tmp_path, "resnet20", 32)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(UsageError, match="pip install huggingface_hub"):
        hub.push_to_hub(run, "someone/x")


def test_bad_format_suggests_the_right_one(tmp_path, capsys):
    with pytest.raises(UsageError, match="'torch-export'"):
        check_format("torchexport")

    assert main(["export", str(tmp_path), "--format", "onxx"]) == 2
    assert "Did you mean 'onnx'?" in capsys.readouterr().err


def test_options_a_format_cannot_take_are_refused(tmp_path):
    cifar = resnets.create_model("resnet20")
    with pytest.raises(UsageError, match="stem='cifar'"):
        export_model(cifar, tmp_path / "m.pth", "torchvision")
    with pytest.raises(UsageError, match="--opset"):
        export_model(cifar, tmp_path / "m.onnx", "onnx", opset=7)
    with pytest.raises(UsageError, match="--fold"):
        export_model(cifar, tmp_path / "m.pth", "torchvision", fold=True)
    assert not list(tmp_path.iterdir())


def test_export_command_prints_the_path_and_difference(tmp_path, capsys):
    _, run = saved_model(tmp_path, "resnet20", 32)

    assert main(["export", str(run), "--format", "torchvision", "--out", str(tmp_path / "x")]) == 2
    assert main(["export", str(run), "--format", "onnx", "--opset", "17"]) == 0

    path, summary = capsys.readouterr().out.splitlines()
    assert path == str(run / "export" / "model.onnx")
    assert "onnx" in summary and "of PyTorch eval mode on batches of 1 and 5" in summary
    assert float(summary.split("within ")[1].split()[0]) <= 1e-4
