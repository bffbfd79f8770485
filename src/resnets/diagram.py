"""A picture of a ResNet's block structure, drawn as He et al. 2015 draw theirs (Fig. 3).

One column from the image down to the classifier: the stem, then every block as a box that
lists its convolutions ("3x3, 64"), each block's shortcut as a line that skips around it to
the add, and the head. Identity shortcuts are solid; shortcuts that change the shape (the
paper's dotted lines: projection or zero-padding) are dashed; plain networks have none.
A run of identical blocks longer than `max_repeats` is drawn once, marked "x N".

The figure is laid out in inches (one data unit is one inch), so text keeps its size
whatever the depth of the model, and the figure grows downwards instead.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Patch
from matplotlib.path import Path as CurvePath
from torch import nn

from .errors import UsageError
from .models.layers import ProjectionShortcut, ZeroPadShortcut
from .models.resnet import ResNet
from .summary import block_kind, human, summarize

log = logging.getLogger(__name__)

FORMATS = (".png", ".svg", ".pdf")
SHORTCUT_LEGEND = {
    "A": "zero-padding shortcut (option A)",
    "B": "projection shortcut (option B)",
    "C": "projection shortcut (option C: on every block)",
    "D": "avg pool and projection shortcut (option D)",
}
COLOURS = {
    "input": "#ffffff",
    "stem": "#d9d9d9",
    "convolutional block": "#f4b183",
    "identity block": "#9dc3e6",
    "plain block": "#a9d18e",
    "head": "#c9b8e0",
}

# Geometry, in inches.
WIDTH = 7.0
CENTRE = 3.45  # of the column of boxes
BOX_WIDTH = 2.5
ARC_X = CENTRE + BOX_WIDTH / 2 + 0.3  # where shortcuts run down the right-hand side
BRACKET_X = CENTRE - BOX_WIDTH / 2 - 0.2  # stage brackets on the left
LINE = 0.17  # height of one line of box text
PAD = 0.08  # above and below a box's text
GAP = 0.34  # between one element and the next; shortcuts leave from its middle
ADD_RADIUS = 0.085
FONT = 8.5


@dataclass
class _Box:
    """One box of the column: a stem, a block (or a run of identical blocks), or the head."""

    kind: str
    lines: list[str]
    shortcut: str | None = None  # None: no shortcut; "identity"; or "changes" (dashed)
    shortcut_label: str = ""
    repeat: int = 1

    @property
    def signature(self) -> tuple:
        return (self.kind, tuple(self.lines), self.shortcut, self.shortcut_label)


@dataclass
class _Stage:
    """Boxes labelled together on the left; a stage of blocks also gets a bracket."""

    label: list[str]
    boxes: list[_Box] = field(default_factory=list)
    bracket: bool = True


def check_diagram_path(path: str | Path) -> Path:
    """Refuse, before any work is done, a file type the diagram cannot be written as."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise UsageError(
            f"a diagram is written as {', '.join(FORMATS)}, chosen by the file's extension; "
            f"got {path.name!r}. Name the file e.g. resnet50.png"
        )
    return path


def draw_diagram(
    model: ResNet,
    path: str | Path,
    *,
    input_size: tuple[int, int, int] | None = None,
    title: str | None = None,
    max_repeats: int = 5,
) -> Path:
    """Draw `model`'s block structure to `path` (.png, .svg or .pdf, by its extension).

    Args:
        input_size: (C, H, W) used for the shapes printed beside each stage; by default
            the size the stem was designed for.
        title: the figure's first line, such as the model's registered name.
        max_repeats: runs of more identical blocks than this are drawn once, marked "x N".

    Returns:
        The path written.
    """
    path = check_diagram_path(path)
    summary = summarize(model, input_size)
    shapes = {row.name: row.output_shape for row in summary.rows}
    stem, stages, head = _describe(model, shapes, max_repeats)

    figure = Figure()
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_axis_off()
    subtitle = (
        f"{human(summary.total_parameters)} parameters, {human(summary.total_macs)} "
        f"multiply-adds for a {_shape(summary.input_size)} image"
    )
    if model.config.preactivation:
        subtitle += "\npre-activation blocks: BN and ReLU before each conv (He et al. 2016)"
    y = _draw_title(axes, title or _default_title(model), subtitle)
    input_box = _Box("input", [f"image, {_shape(summary.input_size)}"])
    y = _draw_box(axes, y, input_box)
    y = _draw_stage(axes, y, _Stage(["stem", _shape(shapes["stem"])], [stem], bracket=False))
    for stage in stages:
        y = _draw_stage(axes, y, stage)
    y = _draw_stage(axes, y, _Stage(["head"], [head], bracket=False))
    _arrow(axes, y, y - GAP)
    axes.text(CENTRE, y - GAP - 0.05, f"{model.config.num_classes} class scores", **_text(va="top"))
    y -= GAP + 0.35
    y = _draw_legend(axes, y, model, stages)

    height = -y + 0.15
    figure.set_size_inches(WIDTH, height)
    axes.set_xlim(0, WIDTH)
    axes.set_ylim(-height, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    log.debug("wrote a diagram of %d blocks to %s", len(model.blocks()), path)
    return path


def _default_title(model: ResNet) -> str:
    config = model.config
    family = "residual" if config.residual else "plain"
    prefix = "pre-activation " if config.preactivation else ""
    return f"{config.depth}-layer {prefix}{family} network, {config.block} blocks"


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


def _conv_text(conv: nn.Conv2d, named: bool = False) -> str:
    """'3x3, 64' as the paper's Fig. 5 writes a conv; '/2' when it strides."""
    k = conv.kernel_size[0]
    text = f"{k}x{k}{' conv' if named else ''}, {conv.out_channels}"
    if conv.groups > 1:
        text += f", {conv.groups} groups"
    if conv.stride[0] > 1:
        text += f", /{conv.stride[0]}"
    return text


def _shortcut_text(shortcut: nn.Module) -> str:
    if isinstance(shortcut, ProjectionShortcut):
        text = _conv_text(shortcut.conv)
        if hasattr(shortcut, "pool"):
            text = f"avg pool /{shortcut.pool.stride}, {text}"
        return text
    if isinstance(shortcut, ZeroPadShortcut):
        subsample = f"/{shortcut.stride}, " if shortcut.stride > 1 else ""
        return f"{subsample}pad +{shortcut.extra_channels} zero channels"
    return ""


def _block_box(block: nn.Module) -> _Box:
    convs = [_conv_text(m) for m in block.branch.modules() if isinstance(m, nn.Conv2d)]
    kind = block_kind(block)
    if block.shortcut is None:
        return _Box(kind, convs)
    style = "identity" if isinstance(block.shortcut, nn.Identity) else "changes"
    return _Box(kind, convs, style, _shortcut_text(block.shortcut))


def _describe(
    model: ResNet, shapes: dict[str, tuple[int, ...]], max_repeats: int
) -> tuple[_Box, list[_Stage], _Box]:
    """The stem box, the stages with their (run-compressed) block boxes, and the head box."""
    stem_lines = []
    for module in model.stem.modules():
        if isinstance(module, nn.Conv2d):
            stem_lines.append(_conv_text(module, named=True))
        elif isinstance(module, nn.MaxPool2d):
            stem_lines.append(
                f"{module.kernel_size}x{module.kernel_size} max pool, /{module.stride}"
            )
    stages = []
    for index, blocks in enumerate(model.stages):
        shape = shapes[f"stages.{index}.{len(blocks) - 1}"]
        label = [f"stage {index + 1}", _shape(shape)]
        if model.config.stem == "imagenet":
            label.insert(1, f"(conv{index + 2}_x)")  # the names of the paper's Table 1
        stages.append(_Stage(label, _compress([_block_box(b) for b in blocks], max_repeats)))
    head_lines = ["global average pool", f"fc, {model.config.num_classes}"]
    if model.config.preactivation:
        head_lines.insert(0, "BN, ReLU")
    return _Box("stem", stem_lines), stages, _Box("head", head_lines)


def _compress(boxes: list[_Box], max_repeats: int) -> list[_Box]:
    """Replace each run of more than `max_repeats` identical boxes by one box marked x N."""
    result: list[_Box] = []
    run: list[_Box] = []
    for box in [*boxes, None]:
        if run and (box is None or box.signature != run[0].signature):
            if len(run) > max_repeats:
                run = [_Box(**{**run[0].__dict__, "repeat": len(run)})]
            result.extend(run)
            run = []
        if box is not None:
            run.append(box)
    return result


def _text(**options) -> dict:
    return {"ha": "center", "va": "center", "fontsize": FONT, **options}


def _draw_title(axes, title: str, subtitle: str) -> float:
    axes.text(CENTRE, -0.2, title, **_text(va="top", fontsize=12, fontweight="bold"))
    axes.text(
        CENTRE, -0.47, subtitle, **_text(va="top", fontsize=9, color="#404040", linespacing=1.5)
    )
    return -0.85 - 0.2 * subtitle.count("\n")


def _box_height(box: _Box) -> float:
    return (len(box.lines) + (box.repeat > 1)) * LINE + 2 * PAD


def _draw_box(axes, top: float, box: _Box) -> float:
    """Draw `box` with its top edge at `top`; return its bottom edge."""
    height = _box_height(box)
    left = CENTRE - BOX_WIDTH / 2
    # A run of blocks shows as a stack: two offset outlines behind the box.
    for offset in (0.1, 0.05)[: 2 if box.repeat > 1 else 0]:
        axes.add_patch(_rounded(left + offset, top - height + offset, height, box.kind))
    axes.add_patch(_rounded(left, top - height, height, box.kind))
    lines = ([f"x {box.repeat}"] if box.repeat > 1 else []) + box.lines
    for i, line in enumerate(lines):
        weight = "bold" if box.repeat > 1 and i == 0 else "normal"
        axes.text(CENTRE, top - PAD - (i + 0.5) * LINE, line, **_text(fontweight=weight))
    return top - height


def _rounded(left: float, bottom: float, height: float, kind: str) -> FancyBboxPatch:
    return FancyBboxPatch(
        (left, bottom),
        BOX_WIDTH,
        height,
        boxstyle="round,pad=0,rounding_size=0.06",
        facecolor=COLOURS[kind],
        edgecolor="#404040",
        linewidth=0.9,
    )


def _arrow(axes, start: float, end: float) -> None:
    axes.add_patch(
        FancyArrowPatch(
            (CENTRE, start),
            (CENTRE, end),
            arrowstyle="-|>",
            mutation_scale=9,
            linewidth=1.0,
            color="#202020",
            shrinkA=0,
            shrinkB=0,
        )
    )


def _draw_stage(axes, y: float, stage: _Stage) -> float:
    """Draw the boxes of one stage below `y`, bracketed and labelled on the left."""
    first_top = y - GAP
    for box in stage.boxes:
        y = _draw_block(axes, y, box)
    label_x = BRACKET_X
    if stage.bracket:
        axes.plot([BRACKET_X, BRACKET_X], [first_top, y], color="#808080", linewidth=1.0)
        for end in (first_top, y):
            axes.plot([BRACKET_X, BRACKET_X + 0.08], [end, end], color="#808080", linewidth=1.0)
        label_x -= 0.12
    middle = (first_top + y) / 2
    axes.text(label_x, middle, "\n".join(stage.label), **_text(ha="right", linespacing=1.4))
    return y


def _draw_block(axes, y: float, box: _Box) -> float:
    """Arrow in, the box, and for residual blocks the shortcut and the add below it."""
    _arrow(axes, y, y - GAP)
    bottom = _draw_box(axes, y - GAP, box)
    if box.shortcut is None:
        return bottom
    add_y = bottom - 0.14 - ADD_RADIUS
    _arrow(axes, bottom, add_y + ADD_RADIUS)
    axes.add_patch(
        Circle((CENTRE, add_y), ADD_RADIUS, facecolor="white", edgecolor="#202020", linewidth=1.0)
    )
    axes.text(CENTRE, add_y, "+", **_text(fontsize=9, fontweight="bold"))
    _draw_shortcut(axes, y - GAP / 2, add_y, box)
    return add_y - ADD_RADIUS


def _draw_shortcut(axes, start: float, end: float, box: _Box) -> None:
    """A line from the block's input, down the right-hand side, into the add."""
    axes.add_patch(Circle((CENTRE, start), 0.025, color="#202020"))
    r = 0.12  # corner radius
    vertices = [
        (CENTRE, start),
        (ARC_X - r, start),
        (ARC_X, start),
        (ARC_X, start - r),
        (ARC_X, end + r),
        (ARC_X, end),
        (ARC_X - r, end),
        (CENTRE + ADD_RADIUS, end),
    ]
    codes = [CurvePath.MOVETO, CurvePath.LINETO, CurvePath.CURVE3, CurvePath.CURVE3]
    codes += [CurvePath.LINETO, CurvePath.CURVE3, CurvePath.CURVE3, CurvePath.LINETO]
    dashed = box.shortcut == "changes"
    axes.add_patch(
        FancyArrowPatch(
            path=CurvePath(vertices, codes),
            arrowstyle="-|>",
            mutation_scale=9,
            linewidth=1.1,
            linestyle=(0, (4, 2.5)) if dashed else "-",
            color="#202020",
        )
    )
    if box.shortcut_label:
        axes.text(
            ARC_X + 0.1, (start + end) / 2, box.shortcut_label, **_text(ha="left", fontsize=7.5)
        )


def _draw_legend(axes, y: float, model: ResNet, stages: list[_Stage]) -> float:
    boxes = [box for stage in stages for box in stage.boxes]
    kinds = ["stem"] + sorted({box.kind for box in boxes}) + ["head"]
    handles = [Patch(facecolor=COLOURS[k], edgecolor="#404040", label=k) for k in kinds]
    styles = {box.shortcut for box in boxes}
    if "identity" in styles:
        handles.append(Line2D([], [], color="#202020", label="identity shortcut"))
    if "changes" in styles:
        handles.append(
            Line2D(
                [],
                [],
                color="#202020",
                linestyle=(0, (4, 2.5)),
                label=SHORTCUT_LEGEND[model.config.shortcut],
            )
        )
    if any(box.repeat > 1 for box in boxes):
        handles.append(Patch(facecolor="white", edgecolor="#404040", label="x N: N such blocks"))
    rows = (len(handles) + 1) // 2
    axes.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(WIDTH / 2, y),
        bbox_transform=axes.transData,
        ncol=2,
        fontsize=8,
        frameon=False,
        handlelength=2.6,
    )
    return y - rows * 0.22 - 0.2
