import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's decoded-image cache."""
    monkeypatch.setenv("RESNETS_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def make_image_folder(root, classes=("circle", "square"), per_class=12, size=16, seed=0):
    """Generated images whose class is visible: a bright disc or a bright square on noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
            c = size / 2 + rng.uniform(-2, 2, 2)
            if index % 2 == 0:
                mask = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < (size / 4) ** 2
            else:
                mask = (abs(yy - c[0]) < size / 4) & (abs(xx - c[1]) < size / 4)
            pixels[mask] = [220, 200 - 150 * (index // 2), 40 + 150 * (index // 2)]
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "shapes")


def resume_to_the_end(run_dir) -> dict:
    """Run `resnets train --resume RUN` in a new process; return its last checkpoint."""
    finished = subprocess.run(
        [sys.executable, "-m", "resnets", "train", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stderr
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
