"""Figures of the diagnostics: gradients over steps and depth, branch outputs, error curves."""

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed, or wanted, on a training machine
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import colors  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 130
GRAD_LABEL = "gradient L2 norm of the layer's weights"


def _main_path(rows: list[dict]) -> list[dict]:
    return [r for r in rows if ".shortcut." not in r["layer"]]


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def moments(steps: Sequence[int], count: int = 4) -> list[int]:
    """`count` sampled steps spread evenly from the first to the last."""
    steps = sorted(set(steps))
    if len(steps) <= count:
        return steps
    picks = {steps[round(i * (len(steps) - 1) / (count - 1))] for i in range(count)}
    return sorted(picks)


def plot_gradients_vs_step(rows: list[dict], path: Path, label: str) -> Path:
    """One line per main-path layer: its gradient norm over training, coloured by depth."""
    rows = _main_path(rows)
    depths = sorted({r["depth"] for r in rows})
    cmap = plt.get_cmap("coolwarm")
    norm = colors.Normalize(vmin=depths[0], vmax=max(depths[-1], depths[0] + 1))
    fig, ax = plt.subplots(figsize=(9, 5.5), constrained_layout=True)
    for depth in depths:
        points = [(r["step"], r["grad_norm"]) for r in rows if r["depth"] == depth]
        points = [(s, g) for s, g in points if _positive(g)]
        if not points:
            continue
        steps, grads = zip(*points, strict=True)
        edge = depth in (depths[0], depths[-1])
        name = {depths[0]: "first layer (input side)", depths[-1]: "last layer (output side)"}
        ax.plot(
            steps,
            grads,
            color=cmap(norm(depth)),
            linewidth=2.2 if edge else 0.9,
            alpha=1.0 if edge else 0.75,
            label=name.get(depth),
        )
    ax.set_yscale("log")
    ax.set(
        xlabel="training step (optimiser updates)",
        ylabel=f"{GRAD_LABEL} (log scale)",
        title=f"Gradient norm of every layer during training\n{label}",
    )
    ax.grid(alpha=0.3, which="both")
    # Below the axes: the lines of a deep network fill the whole plotting area.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax)
    bar.set_label("layer depth (1 = input side)")
    return _save(fig, path)


def plot_gradients_by_depth(rows: list[dict], path: Path, label: str) -> Path:
    """Gradient norm against layer depth, one line per moment of training."""
    rows = _main_path(rows)
    picked = moments([r["step"] for r in rows])
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(9, 5.5), constrained_layout=True)
    for i, step in enumerate(picked):
        points = sorted((r["depth"], r["grad_norm"]) for r in rows if r["step"] == step)
        zeros = sum(g == 0 for _, g in points)
        points = [(d, g) for d, g in points if _positive(g)]
        if not points:
            continue
        name = f"step {step}" + (" (initialisation)" if step == 0 else "")
        if zeros:  # a log axis cannot show them, so the legend says they are missing
            name += f"; {zeros} layers at exactly 0 not shown"
        colour = cmap(i / max(1, len(picked) - 1) * 0.9)
        ax.plot(*zip(*points, strict=True), "o-", markersize=3, color=colour, label=name)
    ax.set_yscale("log")
    ax.set(
        xlabel="layer depth (1 = first conv, input side; last = classifier)",
        ylabel=f"{GRAD_LABEL} (log scale)",
        title=f"Gradient norm by depth at moments of training\n{label}",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="moment of training", loc="best")
    return _save(fig, path)


def plot_branch_std(block_rows: list[dict], path: Path, label: str) -> Path:
    """Standard deviation of each block's branch output (He et al. 2015, Fig. 7)."""
    rows = [r for r in block_rows if math.isfinite(r["branch_std"])]
    picked = moments([r["step"] for r in rows])
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(9, 5), constrained_layout=True)
    for i, step in enumerate(picked):
        points = sorted((r["index"], r["branch_std"]) for r in rows if r["step"] == step)
        name = f"step {step}" + (" (initialisation)" if step == 0 else "")
        colour = cmap(i / max(1, len(picked) - 1) * 0.9)
        ax.plot(*zip(*points, strict=True), "o-", markersize=3, color=colour, label=name)
    ax.set(
        xlabel="block (1 = nearest the input)",
        ylabel="std of the branch output F(x)\n(before the add and ReLU)",
        title=f"Response of each block's branch (cf. He et al. 2015, Fig. 7)\n{label}",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(title="moment of training", loc="best")
    return _save(fig, path)


def plot_init_gradients(per_model: dict[str, list[dict]], path: Path, data: str) -> Path:
    """Gradient norm by depth at initialisation, one panel per model, on a shared log axis."""
    names = list(per_model)
    fig, axes = plt.subplots(
        1,
        len(names),
        figsize=(3.6 * len(names) + 1, 4.6),
        sharey=True,
        squeeze=False,
        constrained_layout=True,
    )
    for ax, name in zip(axes[0], names, strict=True):
        points = sorted((r["depth"], r["grad_norm"]) for r in _main_path(per_model[name]))
        points = [(d, g) for d, g in points if _positive(g)]
        grads = [g for _, g in points]
        ax.plot(*zip(*points, strict=True), "o-", markersize=3, color="C0", label=name)
        ax.set_yscale("log")
        ax.set_title(f"{name}\nmax/min = {max(grads) / min(grads):.3g}", fontsize=10)
        ax.set_xlabel("layer depth (1 = input side)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="best", fontsize=8)
    axes[0][0].set_ylabel(f"{GRAD_LABEL}\n(log scale)")
    fig.suptitle(f"Gradient norm by depth at initialisation (He init, one batch of {data})")
    return _save(fig, path)


def plot_error_curves(
    histories: dict[str, list[dict]],
    residual: dict[str, bool],
    path: Path,
    title: str,
    held_out_name: str = "test",
) -> Path:
    """Training (dashed) and held-out (solid) error per epoch, one colour per model.

    As in He et al. 2015, Figs. 1 and 6: plain networks on the left, residual ones on
    the right, on one error axis, so that depth can be compared within and across panels.
    """
    held = "test" if held_out_name == "test" else "validation"
    groups = [
        ("plain networks", [m for m in histories if not residual[m]]),
        ("residual networks", [m for m in histories if residual[m]]),
    ]
    groups = [(name, models) for name, models in groups if models]
    fig, axes = plt.subplots(
        1,
        len(groups),
        figsize=(6.2 * len(groups), 4.8),
        sharey=True,
        squeeze=False,
        constrained_layout=True,
    )
    colour = {model: f"C{i}" for i, model in enumerate(histories)}
    for ax, (group, models) in zip(axes[0], groups, strict=True):
        for model in models:
            rows = histories[model]
            epochs = [r["epoch"] for r in rows]
            size = 6 if len(rows) <= 12 else 3
            ax.plot(
                epochs,
                [100 * (1 - r["train_acc"]) for r in rows],
                "x--",  # markers keep a single epoch visible
                markersize=size,
                color=colour[model],
                label=f"{model} training",
            )
            ax.plot(
                epochs,
                [100 * (1 - r["val_acc"]) for r in rows],
                "o-",
                markersize=size,
                color=colour[model],
                label=f"{model} {held}",
            )
        ax.set(title=group, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        last = max(len(histories[m]) for m in models)
        ax.set_xlim(0.5, last + 0.5)
        if last <= 12:
            ax.set_xticks(range(1, last + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel("top-1 error (%)")
    fig.suptitle(f"{title}\ndashed line, crosses: training error; solid line, dots: {held} error")
    return _save(fig, path)
