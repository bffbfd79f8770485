"""Messy files, interrupted runs, unsafe pickles, diverging losses: nothing lost or unsafe."""

import io
import logging
import os
import signal
import subprocess
import sys
import time

import lightning as L
import numpy as np
import pytest
import torch
from conftest import resume_to_the_end
from PIL import Image, ImageOps

from resnets.data import decode_image, load_dataset
from resnets.errors import DataError, Stopped, TrainingError, UsageError
from resnets.train import TrainConfig, resume, train
from resnets.weights import load_weights


def _gradient(size=(40, 30)):
    x = np.linspace(0, 255, size[0])[None, :] * np.ones((size[1], 1))
    y = np.linspace(255, 0, size[1])[:, None] * np.ones((1, size[0]))
    return np.stack([x, y, (x + y) / 2], -1).astype(np.uint8)


def write_every_kind(folder):
    """One readable image of each mode and format a camera or editor produces, and the
    unreadable files a real collection holds. Returns (readable, unreadable) names."""
    rgb = Image.fromarray(_gradient())
    good = folder / "good"
    good.mkdir(parents=True)
    rgb.save(good / "rgb.jpg", quality=95)
    rgb.convert("L").save(good / "grey.png")
    rgb.convert("1").save(good / "bilevel.png")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(good / "palette.png")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(good / "palette.gif")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(_gradient()[:, :, 0]))
    rgba.save(good / "alpha.png")
    rgba.convert("LA").save(good / "grey_alpha.png")
    rgb.convert("CMYK").save(good / "cmyk.jpg")
    rgb.save(good / "image.bmp")
    rgb.save(good / "image.tiff")
    rgb.save(good / "image.webp", lossless=True)
    deep = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(good / "sixteen_bit.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: a phone held upright
    rgb.save(good / "rotated.jpg", exif=exif, quality=95)
    bad = folder / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    buffer = io.BytesIO()
    rgb.save(buffer, "PNG")
    (bad / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (bad / "notes.png").write_text("not an image")
    (bad / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    for i in range(4):  # the class still needs readable images
        rgb.rotate(90 * i).save(bad / f"ok{i}.png")
    readable = sorted(p.name for p in good.iterdir()) + [f"ok{i}.png" for i in range(4)]
    return readable, ["empty.jpg", "truncated.png", "notes.png"]


def reference_pixels(path, size=32):
    """What Pillow shows for the file, composited on white, fitted to size x size."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I"):
            array = np.asarray(image, dtype=np.float64) / 65535 * 255
            image = Image.fromarray((array + 0.5).astype(np.uint8))
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        shown = Image.alpha_composite(white, rgba).convert("RGB")
    shown = ImageOps.fit(shown, (size, size), method=Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(shown).copy()).permute(2, 0, 1)


def test_every_kind_of_file_decodes_as_pillow_shows_it_and_bad_ones_are_listed(tmp_path, caplog):
    readable, unreadable = write_every_kind(tmp_path / "mixed")
    for path in (tmp_path / "mixed").glob("*/*"):
        if path.name in readable:
            tensor = decode_image(path, 3, (32, 32))
            assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.uint8
            difference = (tensor.int() - reference_pixels(path).int()).abs().max()
            assert difference <= 1, path.name
    with caplog.at_level(logging.WARNING):
        dataset = load_dataset(f"folder:{tmp_path / 'mixed'}", image_size=32, val_size=4)
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "3 unreadable" in message
    assert all(name in message for name in unreadable)
    assert len(dataset.train) + len(dataset.held_out) == len(readable)
    result = train(
        TrainConfig(
            data=f"folder:{tmp_path / 'mixed'}",
            image_size=32,
            val_size=4,
            epochs=1,
            batch_size=4,
            out=str(tmp_path / "runs"),
            progress_bar=False,
        ),
        dataset=dataset,
    )
    assert (result.run_dir / "model" / "model.safetensors").is_file()


def test_strict_refuses_a_folder_with_unreadable_files(tmp_path):
    write_every_kind(tmp_path / "mixed")
    with pytest.raises(DataError, match="--strict"):
        load_dataset(f"folder:{tmp_path / 'mixed'}", strict=True)
    load_dataset(f"folder:{tmp_path / 'mixed'}", image_size=32)  # writes the decoded cache
    with pytest.raises(DataError, match="3 unreadable.*--strict"):  # read from the cache
        load_dataset(f"folder:{tmp_path / 'mixed'}", image_size=32, strict=True)


def test_a_streamed_folder_names_its_bad_files_with_the_reasons_decoding_gives(
    tmp_path, caplog, monkeypatch
):
    write_every_kind(tmp_path / "mixed")
    reasons = {}
    for in_memory in (True, False):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            load_dataset(f"folder:{tmp_path / 'mixed'}", image_size=32, in_memory=in_memory)
        (message,) = [r.getMessage() for r in caplog.records if "unreadable" in r.msg]
        reasons[in_memory] = message.split(": ", 1)[1].split("; ")
    # the header check finds two; the truncated one is found when its batch is decoded
    assert len(reasons[True]) == 3 and set(reasons[False]) < set(reasons[True])
    assert (
        f"{tmp_path / 'mixed' / 'bad' / 'notes.png'}: not in an image format" in reasons[False][1]
    )

    monkeypatch.setenv("RESNETS_MEMORY_BUDGET_GB", "0.000001")
    with caplog.at_level(logging.INFO):
        load_dataset(f"folder:{tmp_path / 'mixed'}", image_size=32)
    assert "(0.0 MiB, RESNETS_MEMORY_BUDGET_GB)" in caplog.text  # not "0.0 GiB"
    assert "take 0.1 MiB decoded" in caplog.text  # 13 images of 3x32x32 bytes
    monkeypatch.setenv("RESNETS_MEMORY_BUDGET_GB", "-2")
    with pytest.raises(DataError, match="0 or more.*got '-2'"):
        load_dataset(f"folder:{tmp_path / 'mixed'}", image_size=32)


def test_an_image_claiming_a_huge_size_is_refused_in_one_line(tmp_path):
    """A PNG whose header claims 30000x30000 pixels: Pillow's decompression-bomb guard."""
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", 30000, 30000) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    (tmp_path / "bomb.png").write_bytes(bytes(data))
    with pytest.raises(DataError, match="bomb.png"):
        decode_image(tmp_path / "bomb.png")


def test_rotated_jpeg_is_shown_upright(tmp_path):
    write_every_kind(tmp_path / "mixed")
    tensor = decode_image(tmp_path / "mixed" / "good" / "rotated.jpg", 3)
    assert tensor.shape == (3, 40, 30)  # 40 wide, 30 high, turned on its side


def _config(tmp_path, name, **changes):
    values = dict(
        model="resnet20",
        epochs=3,
        batch_size=64,
        out=str(tmp_path),
        name=name,
        progress_bar=False,
        precision="32-true",
        checkpoint_every=0,
    )
    values.update(changes)
    return TrainConfig(**values)


class _SignalAt(L.Callback):
    """SIGTERM after training batch `batch` of epoch `epoch` (None: at the epoch's end)."""

    def __init__(self, epoch, batch=None):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch and self.batch is None:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize(
    ("ema_decay", "batch"),
    [(None, None), (None, 4), (0.9, 4)],
    ids=["epoch-end", "mid-epoch", "mid-epoch-weight-average"],
)
def test_sigterm_then_resume_ends_with_the_weights_of_an_uninterrupted_run(
    tmp_path, ema_decay, batch
):
    digits = load_dataset("digits")
    digits.train = digits.train.subset(torch.arange(640))
    whole = train(_config(tmp_path, "whole", ema_decay=ema_decay), dataset=digits)
    with pytest.raises(Stopped, match="stopped by SIGTERM.*--resume"):
        cut = _config(tmp_path, "cut", ema_decay=ema_decay)
        train(
            cut, dataset=digits, callbacks=[_SignalAt(epoch=0 if batch is None else 1, batch=batch)]
        )
    assert (tmp_path / "cut" / "checkpoints" / "interrupted.ckpt").is_file()
    original = torch.utils.data.Subset  # resume reloads the data itself: give it the subset
    resumed = _resume_with(tmp_path / "cut", digits)
    assert torch.utils.data.Subset is original
    from safetensors.torch import load_file

    expected = load_file(whole.run_dir / "model" / "model.safetensors")
    actual = load_file(resumed.run_dir / "model" / "model.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert [r["epoch"] for r in resumed.rows] == [1, 2, 3]


class _CrashAtStep(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_a_crash_resumed_from_the_step_checkpoint_ends_with_the_uninterrupted_weights(tmp_path):
    """step.ckpt is written after a batch's optimiser step but before Lightning counts the
    batch done; the resumed epoch must not train that batch again."""
    from safetensors.torch import load_file

    digits = load_dataset("digits")
    digits.train = digits.train.subset(torch.arange(640))
    whole = train(_config(tmp_path, "whole", checkpoint_every=5), dataset=digits)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed = _config(tmp_path, "crashed", checkpoint_every=5)
        train(crashed, dataset=digits, callbacks=[_CrashAtStep(17)])  # step.ckpt at step 15
    checkpoints = tmp_path / "crashed" / "checkpoints"
    assert torch.load(checkpoints / "step.ckpt", weights_only=True)["global_step"] == 15
    resumed = _resume_with(tmp_path / "crashed", digits)
    expected = load_file(whole.run_dir / "model" / "model.safetensors")
    actual = load_file(resumed.run_dir / "model" / "model.safetensors")
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def _resume_with(run_dir, dataset, **options):
    from resnets.train import fit

    load = fit.load_training_data
    fit.load_training_data = lambda config: dataset
    try:
        return resume(run_dir, **options)
    finally:
        fit.load_training_data = load


def test_sigkill_mid_epoch_then_resume_repeats_only_the_steps_since_the_checkpoint(tmp_path):
    command = [
        sys.executable,
        "-m",
        "resnets",
        "train",
        "--model",
        "resnet56",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--checkpoint-every",
        "8",
        "--out",
        str(tmp_path),
        "--name",
        "killed",
        "--precision",
        "32-true",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    step_checkpoint = tmp_path / "killed" / "checkpoints" / "step.ckpt"
    deadline = time.time() + 300
    while not step_checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert step_checkpoint.exists(), process.stderr.read().decode()
    saved = torch.load(step_checkpoint, weights_only=True)
    assert saved["epoch"] == 0 and saved["global_step"] % 8 == 0
    last = resume_to_the_end(tmp_path / "killed")
    steps_per_epoch = 1437 // 32 + 1  # 44 full batches and one of 29
    assert last["global_step"] == 2 * steps_per_epoch  # no batch trained twice or skipped
    assert (tmp_path / "killed" / "model" / "model.safetensors").is_file()


def test_an_extended_run_stopped_again_resumes_to_its_new_total(tmp_path):
    digits = load_dataset("digits")
    digits.train = digits.train.subset(torch.arange(128))
    first = train(_config(tmp_path, "grow", epochs=1), dataset=digits)
    with pytest.raises(Stopped, match="stopped by SIGTERM.*--resume"):
        _resume_with(first.run_dir, digits, epochs=3, callbacks=[_SignalAt(epoch=1)])
    finished = _resume_with(first.run_dir, digits)  # no --epochs: the total was recorded
    assert [r["epoch"] for r in finished.rows] == [1, 2, 3]
    kept = sorted(p.name for p in (first.run_dir / "checkpoints").iterdir())
    assert kept == ["best.ckpt", "last.ckpt"]  # the interrupted state is superseded
    with pytest.raises(UsageError, match=r"has finished its 3 epochs.*--epochs 4"):
        _resume_with(first.run_dir, digits)  # not a silent success that trained nothing


def test_resume_refuses_a_total_below_the_epoch_it_stopped_in(tmp_path):
    digits = load_dataset("digits")
    digits.train = digits.train.subset(torch.arange(640))
    with pytest.raises(Stopped, match="stopped by SIGTERM.*--resume"):
        train(_config(tmp_path, "cut"), dataset=digits, callbacks=[_SignalAt(epoch=1, batch=4)])
    with pytest.raises(UsageError, match="trained 1 epoch and part of epoch 2; .* at least 2"):
        _resume_with(tmp_path / "cut", digits, epochs=1)


def test_resume_takes_the_checkpoint_that_trained_most_not_the_latest_written(tmp_path):
    from resnets.train.fit import latest_checkpoint

    digits = load_dataset("digits")
    digits.train = digits.train.subset(torch.arange(128))
    run_dir = train(_config(tmp_path, "done", epochs=2), dataset=digits).run_dir
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    torch.save(
        {**last, "global_step": last["global_step"] - 2}, run_dir / "checkpoints" / "step.ckpt"
    )
    assert latest_checkpoint(run_dir) == run_dir / "checkpoints" / "last.ckpt"


def test_a_run_killed_before_its_first_checkpoint_can_be_started_again(tmp_path):
    import shutil

    digits = load_dataset("digits")
    digits.train = digits.train.subset(torch.arange(128))
    first = train(_config(tmp_path, "killed", epochs=1), dataset=digits)
    shutil.rmtree(first.run_dir / "model")  # what a SIGKILL in epoch 1 leaves: settings only
    for checkpoint in (first.run_dir / "checkpoints").glob("*.ckpt"):
        checkpoint.unlink()
    with pytest.raises(TrainingError, match="nothing to resume; start it again with the same"):
        resume(first.run_dir)
    again = train(_config(tmp_path, "killed", epochs=1), dataset=digits)
    assert (again.run_dir / "model" / "model.safetensors").is_file()
    with pytest.raises(UsageError, match="already holds a run"):  # now it saved something
        train(_config(tmp_path, "killed", epochs=1), dataset=digits)


class _PoisonWeights(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            with torch.no_grad():
                pl_module.model.head.weight.fill_(float("nan"))


def test_a_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    digits = load_dataset("digits")
    digits.train = digits.train.subset(torch.arange(256))
    with pytest.raises(
        TrainingError, match=r"at step \d+ \(epoch 2\); last.ckpt, the last good .* kept.*--lr"
    ):
        train(_config(tmp_path, "nan"), dataset=digits, callbacks=[_PoisonWeights()])
    last = torch.load(tmp_path / "nan" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0
    assert all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )


def test_a_pickle_that_would_run_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {"head.weight": Payload()}}, tmp_path / "evil.pth")
    from resnets import create_model

    with pytest.raises(DataError, match="could run code"):
        load_weights(create_model("resnet20"), tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize(
    "args, code, expected",
    [
        (["train", "--resume", "/no/such/run"], 1, "no run at"),
        (["predict", "/no/such/run", "x.png"], 1, "does not exist"),
        (["train", "--epochs", "0"], 2, "--epochs must be at least 1"),
        (["train", "--data", "digts"], 2, "Did you mean 'digits'"),
        (["train", "--recipe", "quick"], 2, "invalid choice: 'quick'"),  # argparse's own
        (["predict", "run", "a.png", "--backend", "tvm"], 2, "see resnets predict --help"),
        (["trian"], 2, "invalid choice: 'trian'"),
        (["evaluate", "run", "--strict"], 2, "resnets evaluate: error: unrecognized arguments"),
    ],
)
def test_cli_errors_are_one_line_with_the_right_exit_code(args, code, expected):
    process = subprocess.run(
        [sys.executable, "-m", "resnets", *args], capture_output=True, text=True, timeout=120
    )
    assert process.returncode == code
    assert expected in process.stderr
    assert len(process.stderr.strip().splitlines()) == 1


def test_the_command_starts_without_torch_so_it_answers_an_early_ctrl_c_itself():
    code = "import sys, resnets, resnets.cli.main; print('torch' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert loaded.stdout.strip() == "False", loaded.stderr
    import resnets

    assert sorted(resnets.__all__) == sorted(resnets._PUBLIC)
    assert resnets.create_model("resnet20").__class__ is resnets.ResNet


def test_debug_shows_the_traceback():
    process = subprocess.run(
        [sys.executable, "-m", "resnets", "--debug", "train", "--epochs", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode != 0 and "Traceback" in process.stderr


def test_a_second_resume_while_the_run_trains_is_refused(tmp_path):
    from resnets.runs import training_lock

    digits = load_dataset("digits")
    digits.train = digits.train.subset(torch.arange(128))
    with pytest.raises(Stopped, match="stopped by SIGTERM.*--resume"):
        train(_config(tmp_path, "busy"), dataset=digits, callbacks=[_SignalAt(epoch=0)])
    with training_lock(tmp_path / "busy"):  # as a first `--resume` holds it while it trains
        with pytest.raises(TrainingError, match="being trained by another process"):
            _resume_with(tmp_path / "busy", digits, epochs=5)
    assert "epochs: 3" in (tmp_path / "busy" / "config.yaml").read_text()  # left as it was
    assert len(_resume_with(tmp_path / "busy", digits).rows) == 3


@pytest.mark.parametrize("batch", [None, 2], ids=["epoch-end", "mid-epoch"])
def test_a_run_reading_its_files_batch_by_batch_resumes_exactly(tmp_path, batch):
    from conftest import make_image_folder
    from safetensors.torch import load_file

    from resnets.train import resume

    folder = make_image_folder(tmp_path / "shapes", per_class=20)
    options = dict(data=f"folder:{folder}", in_memory=False, batch_size=8, val_size=8)
    whole = train(_config(tmp_path, "whole", **options))
    with pytest.raises(Stopped):
        train(_config(tmp_path, "cut", **options), callbacks=[_SignalAt(epoch=1, batch=batch)])
    resumed = resume(tmp_path / "cut")
    expected = load_file(whole.run_dir / "model" / "model.safetensors")
    actual = load_file(resumed.run_dir / "model" / "model.safetensors")
    assert all(torch.equal(expected[k], actual[k]) for k in expected)


def test_a_damaged_file_found_while_reading_batches_is_skipped_or_refused(tmp_path, caplog):
    from conftest import make_image_folder

    from resnets.cli.main import main

    folder = make_image_folder(tmp_path / "shapes", per_class=12)
    whole = (folder / "circle" / "000.png").read_bytes()
    (folder / "circle" / "zz-truncated.png").write_bytes(whole[: len(whole) // 2])  # header ok
    args = [sys.executable, "-m", "resnets", "train", "--data", f"folder:{folder}"]
    args += ["--no-in-memory", "--epochs", "1", "--batch-size", "8", "--val-size", "0.5"]
    args += ["--out", str(tmp_path / "runs")]
    lenient = subprocess.run([*args, "--name", "lenient"], capture_output=True, text=True)
    assert lenient.returncode == 0, lenient.stderr
    assert "skipping an unreadable file" in lenient.stderr and "zz-truncated.png" in lenient.stderr

    strict = subprocess.run([*args, "--name", "strict", "--strict"], capture_output=True, text=True)
    assert strict.returncode == 1
    assert len(strict.stderr.strip().splitlines()) == 1  # not the DataLoader worker's traceback
    assert "zz-truncated.png" in strict.stderr and "truncated" in strict.stderr

    run = str(tmp_path / "runs" / "lenient")
    assert main(["evaluate", run, "--data", f"folder:{folder}"]) == 0
    assert "zz-truncated.png" in caplog.text
    scored = tmp_path / "runs" / "lenient" / "evaluation-shapes" / "predictions.csv"
    assert len(scored.read_text().splitlines()) == 1 + 24  # a header and every readable image
