import pytest
import torch
from torch import nn

import resnets
from resnets.models import BasicBlock, Bottleneck, PreActBlock, create_model, list_models

# He et al. 2015 (Table 1 and section 4.2) as torchvision and the CIFAR reference count them.
REFERENCE_PARAMETERS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
    "resnext50_32x4d": 25_028_904,
}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(REFERENCE_PARAMETERS))
def test_parameter_count_matches_the_literature(name):
    num_classes = 10 if name in {f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202)} else 1000
    model = create_model(name, num_classes=num_classes, in_channels=3)
    assert count(model) == REFERENCE_PARAMETERS[name]


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_forward_and_backward_on_small_and_non_square_inputs(name):
    model = create_model(name, num_classes=7, in_channels=2)
    side = model.min_input_size
    for height, width in ((side, side), (side, 2 * side + side // 2)):
        x = torch.randn(2, 2, height, width)
        logits = model(x)
        assert logits.shape == (2, 7)
    logits.sum().backward()
    assert model.head.weight.grad is not None
    assert model.stem[0].conv.weight.grad is not None if hasattr(model.stem[0], "conv") else True


def test_plain_networks_have_no_shortcuts_and_residual_ones_do():
    plain, residual = create_model("plain20"), create_model("resnet20")
    assert all(block.shortcut is None for block in plain.blocks())
    assert all(block.shortcut is not None for block in residual.blocks())
    assert count(plain) == count(residual)  # option A shortcuts have no parameters


@pytest.mark.parametrize(
    "block",
    [
        BasicBlock(8, 8),
        BasicBlock(8, 8, num_convs=3),
        Bottleneck(16, 16, width=4),
    ],
)
def test_block_with_zero_branch_weights_returns_relu_of_its_input(block):
    for module in block.branch.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.zeros_(module.weight)
    block.eval()
    x = torch.randn(3, block.branch[0].conv.in_channels, 6, 5)
    assert torch.equal(block(x), torch.relu(x))


def test_preactivation_block_with_zero_branch_is_the_identity():
    block = PreActBlock(8, 8).eval()
    for module in block.branch.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.zeros_(module.weight)
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(block(x), x)  # nothing after the addition (He et al. 2016)


def test_zero_initialised_residual_network_starts_with_identity_blocks():
    model = create_model("resnet56", zero_init_residual=True).eval()
    block = model.stages[1][3]
    x = torch.rand(2, 32, 8, 8)
    assert torch.equal(block(x), x)
    plain = create_model("plain56", zero_init_residual=True)
    assert all(b.branch[-1].norm.weight.abs().sum() > 0 for b in plain.blocks())


def test_convolutional_block_projects_and_identity_block_does_not():
    model = create_model("resnet50")
    first, second = model.stages[1][0], model.stages[1][1]
    assert isinstance(first.shortcut, resnets.models.ProjectionShortcut)
    assert first.shortcut.conv.stride == (2, 2)
    assert isinstance(second.shortcut, nn.Identity)


def test_a_tiny_batch_is_overfitted_to_full_accuracy():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4, in_channels=3)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).all()


def test_list_models_filters_by_pattern_and_unknown_names_suggest_neighbours():
    assert set(list_models("resnet*")) >= {"resnet18", "resnet20", "resnet1202"}
    assert "plain56" not in list_models("resnet*")
    with pytest.raises(ValueError, match="resnet50"):
        create_model("resnet5O")


def test_unknown_model_option_is_a_clear_error():
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet20", num_class=3)


def test_models_command_with_a_pattern_that_matches_nothing_says_so(capsys):
    from resnets.cli.main import main

    assert main(["models", "resnet5"]) == 2
    assert "no registered model matches 'resnet5'" in capsys.readouterr().err
