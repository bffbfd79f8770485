"""Model summaries: multiply-adds against the literature, parameter totals, JSON, diagrams."""

import json

import pytest
import torch

import resnets
from resnets.cli.main import main
from resnets.models import ResNet, model_config
from resnets.summary import count_parameters_of, render_table, summarize


def meta_model(name: str, **options) -> ResNet:
    """A registered model without weights in memory: summaries only need shapes."""
    with torch.device("meta"):
        return ResNet(model_config(name, **options))


@pytest.mark.parametrize(
    ("name", "expected", "tolerance"),
    [
        ("resnet50", 4.1e9, 0.02),  # He et al. 2015 quote 3.8 G for v1; v1.5 costs ~4.1 G
        ("resnet18", 1.8e9, 0.02),  # He et al. 2015, Table 1
        ("resnet20", 41e6, 0.03),  # the count usually quoted for CIFAR ResNet-20
    ],
)
def test_multiply_adds_match_the_literature(name, expected, tolerance):
    macs = summarize(meta_model(name)).total_macs
    assert macs == pytest.approx(expected, rel=tolerance)


def test_v1_bottlenecks_cost_what_the_paper_says():
    """Striding in the first 1x1 (the paper's v1) makes ResNet-50 3.8 G (Table 1)."""
    macs = summarize(meta_model("resnet50", bottleneck_stride="1x1")).total_macs
    assert macs == pytest.approx(3.8e9, rel=0.02)


@pytest.mark.parametrize("name", ["resnet20", "resnet50d", "preact_resnet164", "plain34"])
@pytest.mark.parametrize("depth", ["block", "layer"])
def test_rows_add_up_to_the_totals(name, depth):
    model = meta_model(name)
    summary = summarize(model, depth=depth)

    assert sum(row.parameters for row in summary.rows) == summary.total_parameters
    assert summary.total_parameters == sum(p.numel() for p in model.parameters())
    assert sum(row.macs for row in summary.rows) == summary.total_macs
    assert summary.rows[-1].output_shape == (model.config.num_classes,)


def test_block_rows_name_each_kind_of_block():
    kinds = [row.kind for row in summarize(meta_model("resnet20")).rows]
    assert kinds == (
        ["stem"]
        + ["identity block"] * 3
        + (["convolutional block"] + ["identity block"] * 2) * 2
        + ["global average pool", "head"]
    )
    plain = {row.kind for row in summarize(meta_model("plain20")).rows}
    assert "plain block" in plain and "identity block" not in plain


def test_layer_rows_show_shapes_and_strides():
    rows = {row.name: row for row in summarize(meta_model("resnet18"), depth="layer").rows}

    assert rows["stem.0.conv"].output_shape == (64, 112, 112)
    assert rows["stem.0.conv"].kind == "conv 7x7/2"
    assert rows["stem.0.conv"].macs == 64 * 112 * 112 * 3 * 7 * 7
    assert rows["stem.1"].kind == "max pool 3x3/2"
    assert rows["stages.1.0.shortcut.conv"].kind == "shortcut conv 1x1/2"
    assert rows["head"].macs == 512 * 1000


def test_summary_runs_on_a_real_model_and_leaves_its_mode_alone():
    model = resnets.create_model("resnet20").train()
    summary = summarize(model, (3, 32, 32))
    assert model.training
    assert summary.total_macs == summarize(meta_model("resnet20")).total_macs


def test_count_parameters_of_matches_the_literature():
    # torchvision's counts for the same architectures.
    assert count_parameters_of(model_config("resnet18")) == 11_689_512
    assert count_parameters_of(model_config("resnet50")) == 25_557_032
    assert count_parameters_of(model_config("resnet152")) == 60_192_808


def cifar_counts(blocks: int, shortcut: str, residual: bool = True) -> int:
    """Parameters of a CIFAR ResNet-(6n+2), counted from the paper's description."""

    def conv_norm(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k * k + 2 * c_out  # no conv bias; norm scale and shift

    total = conv_norm(3, 16, 3) + 64 * 10 + 10  # stem, and the fc head
    c_in = 16
    for c_out in (16, 32, 64):
        for _ in range(blocks):
            total += conv_norm(c_in, c_out, 3) + conv_norm(c_out, c_out, 3)
            changes = c_in != c_out
            if residual and (shortcut == "C" or (changes and shortcut in ("B", "D"))):
                total += conv_norm(c_in, c_out, 1)
            c_in = c_out
    return total


@pytest.mark.parametrize("shortcut", ["A", "B", "C", "D"])
def test_each_shortcut_option_has_the_parameters_it_should(shortcut):
    config = model_config("resnet20", shortcut=shortcut)
    assert count_parameters_of(config) == cifar_counts(3, shortcut)


def test_option_a_adds_nothing_to_the_plain_net_and_c_adds_most():
    plain = count_parameters_of(model_config("plain20"))
    counts = {s: count_parameters_of(model_config("resnet20", shortcut=s)) for s in "ABCD"}

    assert plain == cifar_counts(3, "A", residual=False) == counts["A"] == 269_722
    assert counts["A"] < counts["B"] == counts["D"] < counts["C"]


@pytest.mark.parametrize(
    ("stride_at", "expected"),
    [("1x1", [(2, 2), (1, 1), (1, 1)]), ("3x3", [(1, 1), (2, 2), (1, 1)])],
)
def test_bottleneck_stride_goes_where_v1_and_v1_5_put_it(stride_at, expected):
    model = meta_model("resnet50", bottleneck_stride=stride_at)
    first_of_stage_2 = model.stages[1][0]

    strides = [group.conv.stride for group in first_of_stage_2.branch]

    assert strides == expected
    assert first_of_stage_2.shortcut.conv.stride == (2, 2)


def test_table_has_a_row_per_block_and_a_total():
    summary = summarize(meta_model("resnet20"))
    table = render_table(summary)

    assert len(table.splitlines()) == len(summary.rows) + 5  # header, 2 rules, total, footer
    assert "stages.2.0  convolutional block  64x8x8" in table
    assert "269,722" in table and "40,551,040" in table


def test_summary_command_prints_json_that_parses(capsys):
    assert main(["summary", "resnet20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)

    assert result["input_size"] == [3, 32, 32]
    assert result["total_parameters"] == 269_722
    assert result["rows"][0] == {
        "name": "stem",
        "kind": "stem",
        "output_shape": [16, 32, 32],
        "parameters": 464,
        "macs": 442_368,
    }


def test_summary_command_options(capsys):
    args = ["summary", "resnet18", "--input-size", "1,64,64", "--num-classes", "6"]
    args += ["--depth", "layer", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)

    assert result["input_size"] == [1, 64, 64]
    assert result["rows"][0]["parameters"] == 64 * 1 * 7 * 7
    assert result["rows"][-1]["output_shape"] == [6]


def test_summary_command_reads_a_model_directory(tmp_path, capsys):
    model = resnets.create_model("resnet20", num_classes=4)
    resnets.save_model_dir(model, tmp_path / "model", architecture="resnet20")

    assert main(["summary", str(tmp_path / "model"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][-1]["output_shape"] == [4]


@pytest.mark.parametrize("size", ["224", "3,224", "3,a,224", "3,0,224"])
def test_bad_input_size_is_a_usage_error_with_an_example(size, capsys):
    assert main(["summary", "resnet50", "--input-size", size]) == 2
    assert "--input-size 3,224,224" in capsys.readouterr().err


def test_unknown_model_suggests_the_closest(capsys):
    assert main(["summary", "resnet05"]) == 2
    assert "resnet50" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["resnet20", "resnet110", "resnet50d", "plain18"])
def test_diagram_writes_png_and_svg(name, tmp_path):
    from resnets.diagram import draw_diagram

    model = meta_model(name)
    png = draw_diagram(model, tmp_path / f"{name}.png", title=name)
    svg = draw_diagram(model, tmp_path / f"{name}.svg", title=name)

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "<svg" in svg.read_text()[:1000]


def test_very_deep_models_compress_repeated_blocks(tmp_path):
    from resnets.diagram import draw_diagram

    path = draw_diagram(meta_model("resnet1202"), tmp_path / "deep.svg")
    text = path.read_text()

    # Text is drawn as glyphs, so check the picture stays the size of a few blocks.
    height = float(text.split('height="', 1)[1].split("pt", 1)[0])
    assert height < 15 * 72


def test_diagram_refuses_unknown_formats(capsys, tmp_path):
    assert main(["summary", "resnet20", "--diagram", str(tmp_path / "net.jpg")]) == 2
    assert ".png" in capsys.readouterr().err
