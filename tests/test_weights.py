"""Weights interchange: torchvision and timm layouts, wrapped checkpoints, new heads and stems."""

import logging

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

import resnets
from resnets.errors import DataError, UsageError
from resnets.weights import read_state_dict, to_timm, to_torchvision

# (name, batch of images) per torchvision model: the full 224x224 size where it is cheap,
# smaller images for the deep ones, whose layers are tested just as well at 64x64.
TORCHVISION_MODELS = [
    ("resnet18", (4, 3, 224, 224)),
    ("resnet50", (4, 3, 224, 224)),
    ("resnet34", (2, 3, 64, 64)),
    ("resnext50_32x4d", (2, 3, 64, 64)),
    pytest.param("resnet101", (2, 3, 64, 64), marks=pytest.mark.slow),
    pytest.param("resnet152", (2, 3, 64, 64), marks=pytest.mark.slow),
]


def randomise_norms(model: nn.Module) -> nn.Module:
    """Give every batch norm its own statistics, scale and shift.

    Freshly initialised norms are all alike, so a conversion that swapped two of them
    would still give the same logits; distinct values make every misplaced tensor show.
    """
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(0.1 * torch.randn(n, generator=generator))
    return model.eval()


def images(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def max_difference(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a.eval()(x) - b.eval()(x)).abs().max().item()


@pytest.mark.parametrize(("name", "shape"), TORCHVISION_MODELS)
def test_torchvision_weights_give_the_same_logits(name, shape, tmp_path):
    torch.manual_seed(0)
    reference = randomise_norms(getattr(torchvision.models, name)())
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)

    model = resnets.create_model(name, weights=path)

    assert max_difference(model, reference, images(shape)) <= 1e-5


def test_timm_resnet50_weights_give_the_same_logits(tmp_path):
    torch.manual_seed(0)
    reference = randomise_norms(timm.create_model("resnet50"))
    torch.save(reference.state_dict(), tmp_path / "timm.pth")

    model = resnets.load_weights(resnets.create_model("resnet50"), tmp_path / "timm.pth")

    assert max_difference(model, reference, images((2, 3, 224, 224))) <= 1e-5


def test_timm_resnet50d_converts_both_ways(tmp_path):
    """The deep stem (conv1.0/.1/.3/...) and the avg-pool shortcut (downsample.1/.2)."""
    torch.manual_seed(0)
    reference = randomise_norms(timm.create_model("resnet50d"))
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    x = images((2, 3, 80, 80))  # 5x5 maps before the last stage: the ceil-mode pool pads

    model = resnets.create_model("resnet50d", weights=tmp_path / "timm.pth")
    back = timm.create_model("resnet50d")
    back.load_state_dict(to_timm(model))  # strict: every key has its place

    assert max_difference(model, reference, x) <= 1e-5
    assert max_difference(back, reference, x) == 0


def test_to_torchvision_round_trip():
    torch.manual_seed(0)
    model = randomise_norms(resnets.create_model("resnet18"))
    reference = torchvision.models.resnet18()

    reference.load_state_dict(to_torchvision(model))  # strict: every key has its place

    assert max_difference(model, reference, images((2, 3, 64, 64))) <= 1e-5


@pytest.mark.parametrize("name", ["resnet50d", "preact_resnet18", "plain18", "resnet20"])
def test_to_torchvision_refuses_layouts_torchvision_lacks(name):
    with pytest.raises(UsageError):
        to_torchvision(resnets.create_model(name))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: {f"module.{k}": v for k, v in s.items()},  # DataParallel, DDP
        lambda s: {f"_orig_mod.{k}": v for k, v in s.items()},  # torch.compile
        lambda s: {f"_orig_mod.module.{k}": v for k, v in s.items()},  # compiled DDP
        lambda s: {"state_dict": {f"model._orig_mod.{k}": v for k, v in s.items()}, "epoch": 3},
        lambda s: {"model": s, "optimizer": {"lr": torch.tensor(0.1)}},
        lambda s: {"state_dict": {"model": s}},
    ],
    ids=["module", "orig_mod", "orig_mod-module", "lightning", "model", "nested-twice"],
)
def test_wrapped_and_nested_checkpoints_load(wrap, tmp_path):
    source = randomise_norms(resnets.create_model("resnet20"))
    torch.save(wrap(source.state_dict()), tmp_path / "checkpoint.pt")

    model = resnets.create_model("resnet20", weights=tmp_path / "checkpoint.pt")

    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_safetensors_with_a_wrapper_prefix_loads(tmp_path):
    source = randomise_norms(resnets.create_model("resnet20"))
    save_file(
        {f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "w.safetensors"
    )

    model = resnets.create_model("resnet20", weights=tmp_path / "w.safetensors")

    assert max_difference(model, source, images((2, 3, 32, 32))) == 0


def test_classifier_of_another_size_is_replaced_and_logged(tmp_path, caplog):
    reference = randomise_norms(torchvision.models.resnet18())
    torch.save(reference.state_dict(), tmp_path / "imagenet.pth")
    model = resnets.create_model("resnet18", num_classes=6)
    new_head = model.head.weight.detach().clone()

    with caplog.at_level(logging.INFO, logger="resnets.weights"):
        resnets.load_weights(model, tmp_path / "imagenet.pth")

    assert "1000 classes" in caplog.text and "6" in caplog.text
    assert torch.equal(model.head.weight, new_head)
    assert torch.equal(model.stem[0].conv.weight, reference.conv1.weight)
    assert torch.equal(
        model.stages[3][1].branch[1].norm.running_var, reference.layer4[1].bn2.running_var
    )


def test_one_channel_model_sums_rgb_weights(tmp_path):
    """A grey image through the 1-channel model equals it replicated through the RGB model."""
    rgb = randomise_norms(torchvision.models.resnet18())
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")

    grey_model = resnets.create_model("resnet18", in_channels=1, weights=tmp_path / "rgb.pth")

    grey = images((2, 1, 64, 64))
    with torch.no_grad():
        expected = rgb(grey.expand(-1, 3, -1, -1))
        actual = grey_model.eval()(grey)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_weights_that_do_not_fit_list_every_kind_of_difference(tmp_path):
    state = resnets.create_model("resnet34").state_dict()
    state["stem.0.conv.weight"] = torch.zeros(64, 3, 3, 3)  # a 3x3 stem instead of 7x7
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "resnet34.pt")

    with pytest.raises(DataError) as error:
        resnets.create_model("resnet50", weights=tmp_path / "resnet34.pt")

    message = str(error.value)
    assert "missing keys" in message and "stages.0.0.shortcut.conv.weight" in message
    assert "unexpected keys" in message and "extra.weight" in message
    assert "mismatched shapes" in message
    assert "stem.0.conv.weight: file (64, 3, 3, 3) vs model (64, 3, 7, 7)" in message
    assert "more" in message  # resnet34 and resnet50 differ in far more than ten keys


def test_a_pickled_model_is_refused_rather_than_unpickled(tmp_path):
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")  # a whole module needs code to load

    with pytest.raises(DataError, match="could run code"):
        read_state_dict(tmp_path / "module.pt")


def test_a_file_that_is_not_weights_says_so(tmp_path):
    (tmp_path / "notes.pth").write_text("not weights")

    with pytest.raises(DataError, match="is not a weights file"):
        read_state_dict(tmp_path / "notes.pth")


def test_missing_file_names_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="safetensors"):
        resnets.create_model("resnet20", weights=tmp_path / "nothing.pt")
