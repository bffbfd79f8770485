import pickle

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from resnets.data import decode_image, load_dataset
from resnets.data.augment import normalize, random_crop_flip
from resnets.errors import DataError, UsageError


def test_digits_is_a_fixed_stratified_split_of_all_1797_images():
    first, second = load_dataset("digits"), load_dataset("digits")
    assert len(first.train) + len(first.held_out) == 1797
    assert first.train.images.shape[1:] == (1, 32, 32)
    assert torch.equal(first.held_out.labels, second.held_out.labels)
    counts = torch.bincount(first.held_out.labels)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 20% of ~180 per digit
    assert not first.flip


def test_folder_with_seeded_split_keeps_every_image_once(image_folder):
    a = load_dataset(f"folder:{image_folder}", val_size=6, seed=1)
    b = load_dataset(f"folder:{image_folder}", val_size=6, seed=1)
    c = load_dataset(f"folder:{image_folder}", val_size=6, seed=2)
    assert a.class_names == ["circle", "square"]
    assert (len(a.train), len(a.held_out)) == (18, 6)
    assert a.held_out.files == b.held_out.files != c.held_out.files
    assert not set(a.train.files) & set(a.held_out.files)
    assert a.image_size == (16, 16) and a.channels == 3


def test_folder_with_train_and_val_subfolders_uses_them(tmp_path):
    from conftest import make_image_folder

    make_image_folder(tmp_path / "data" / "train", per_class=5)
    make_image_folder(tmp_path / "data" / "val", per_class=2, seed=3)
    dataset = load_dataset(f"folder:{tmp_path / 'data'}")
    assert (len(dataset.train), len(dataset.held_out)) == (10, 4)


@pytest.mark.parametrize("spec", ["digits", "folder:{tmp}/data"])
def test_a_val_size_that_cannot_apply_is_named_in_a_warning(spec, tmp_path, caplog):
    from conftest import make_image_folder

    make_image_folder(tmp_path / "data" / "train", per_class=5)
    make_image_folder(tmp_path / "data" / "val", per_class=2, seed=3)
    spec = spec.format(tmp=tmp_path)
    held_out = len(load_dataset(spec).held_out)
    assert "ignored" not in caplog.text  # the default says nothing
    assert len(load_dataset(spec, val_size=3).held_out) == held_out
    assert f"--val-size 3 is ignored: {spec} comes with its own" in caplog.text


def test_a_folder_over_the_memory_budget_is_read_from_its_files_with_the_same_pixels(
    image_folder, monkeypatch
):
    from resnets.data.folders import FileImages

    in_memory = load_dataset(f"folder:{image_folder}", val_size=6)
    monkeypatch.setenv("RESNETS_MEMORY_BUDGET_GB", "0.000001")  # 1 KiB: 24 images do not fit
    from_files = load_dataset(f"folder:{image_folder}", val_size=6)
    assert isinstance(from_files.train.images, FileImages) and in_memory.train.in_memory
    for ours, theirs in [
        (in_memory.train, from_files.train),
        (in_memory.held_out, from_files.held_out),
    ]:
        assert ours.files == theirs.files and torch.equal(ours.labels, theirs.labels)
        assert torch.equal(ours.images, theirs.images[:])
        picked = torch.tensor([3, 0, 3])
        assert torch.equal(ours.images[picked], theirs.images[picked])
    assert from_files.mean == in_memory.mean and from_files.std == in_memory.std
    assert from_files.image_size == (16, 16) and from_files.channels == 3
    monkeypatch.delenv("RESNETS_MEMORY_BUDGET_GB")
    kept_on_disk = load_dataset(f"folder:{image_folder}", val_size=6, in_memory=False)
    assert not kept_on_disk.train.in_memory  # asked for, whatever the budget


def test_cache_returns_the_pixels_decoding_gives(image_folder):
    first = load_dataset(f"folder:{image_folder}", val_size=0.25)
    cached = load_dataset(f"folder:{image_folder}", val_size=0.25)
    assert torch.equal(first.train.images, cached.train.images)
    one = first.train.files[0]
    index = first.train.files.index(one)
    assert torch.equal(first.train.images[index], decode_image(one, 3, (16, 16)))


def test_cifar10_batches_load_with_labels_in_order(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        batch = {b"data": data, b"labels": [0, 1, 2, 9]}
        with open(tmp_path / name, "wb") as stream:
            pickle.dump(batch, stream)
    dataset = load_dataset(f"cifar10:{tmp_path}")
    assert dataset.train.images.shape == (20, 3, 32, 32)
    assert dataset.held_out.labels.tolist() == [0, 1, 2, 9]
    assert dataset.class_names[9] == "truck"
    assert torch.equal(dataset.held_out.images[0].flatten(), torch.from_numpy(data[0]))


def test_cifar10_batch_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as stream:
            pickle.dump({b"data": Evil(), b"labels": [0]}, stream)
    with pytest.raises(DataError, match="refusing"):
        load_dataset(f"cifar10:{tmp_path}")


def test_signs_h5_loads_images_labels_and_class_names(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6)):
        with h5py.File(tmp_path / f"{split}_signs.h5", "w") as h5:
            h5[f"{split}_set_x"] = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
            h5[f"{split}_set_y"] = np.arange(n) % 6
            h5["list_classes"] = np.arange(6)
    dataset = load_dataset(f"signs:{tmp_path}")
    assert dataset.train.images.shape == (12, 3, 64, 64)
    assert dataset.held_out.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert dataset.class_names == ["0", "1", "2", "3", "4", "5"]


@pytest.mark.parametrize(
    "spec, error",
    [("imagenet:/x", UsageError), ("folder", UsageError), ("folder:/no/such/path", OSError)],
)
def test_bad_dataset_specs_raise_clear_errors(spec, error):
    with pytest.raises(error):
        load_dataset(spec)


def test_random_crop_without_padding_or_flip_is_the_identity():
    images = torch.randint(0, 256, (5, 3, 8, 6), dtype=torch.uint8)
    assert torch.equal(random_crop_flip(images, 0, False), images)


def test_random_crop_shifts_content_and_flip_mirrors_it():
    images = torch.arange(4 * 6, dtype=torch.uint8).view(1, 1, 4, 6).repeat(64, 3, 1, 1)
    out = random_crop_flip(images, 2, True)
    mirrored = images.flip(-1)
    matches = [torch.equal(o, images[0]) or torch.equal(o, mirrored[0]) for o in out]
    assert 0 < sum(matches) < 64  # some crops land at the centre, most shift
    inner = out[:, 0, 1:3, 2:4]
    assert all(torch.isin(v, images[0]).all() for v in inner)


def test_normalize_maps_the_mean_to_zero():
    images = torch.full((2, 3, 4, 4), 128, dtype=torch.uint8)
    mean = torch.full((3,), 128 / 255)
    out = normalize(images, mean, torch.full((3,), 0.25))
    assert out.abs().max() < 1e-6


def test_decode_image_matches_pillow_and_handles_grey_and_transparency(tmp_path):
    rgba = Image.new("RGBA", (10, 6), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.save(tmp_path / "a.png")
    tensor = decode_image(tmp_path / "a.png", 3)
    assert tensor.shape == (3, 6, 10)
    assert tensor[:, 0, 0].tolist() == [0, 0, 255]
    assert tensor[:, 1, 1].tolist() == [255, 255, 255]  # transparent shows as white
    grey = decode_image(tmp_path / "a.png", 1, (4, 4))
    assert grey.shape == (1, 4, 4)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="empty.jpg"):
        decode_image(tmp_path / "empty.jpg")


def test_an_empty_class_folder_is_kept_with_a_warning(tmp_path, caplog):
    from resnets.data.folders import scan_folder

    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "1.png")
    scan = scan_folder(tmp_path)
    assert scan.class_names == ["a", "b"] and scan.labels == [0]
    assert "['b']" in caplog.text and "hold no image files" in caplog.text
