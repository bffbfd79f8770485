"""`resnets predict` and `resnets evaluate` on what a newcomer gives them: unreadable files,
unfinished runs, options the model cannot honour, other data."""

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.cli.main import main
from resnets.errors import UsageError
from resnets.inference import Predictor
from resnets.train import TrainConfig, train


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One epoch of a small ResNet on the bundled digits, which training never mirrors."""
    root = tmp_path_factory.mktemp("digits")
    config = TrainConfig(
        model="resnet20",
        data="digits",
        epochs=1,
        batch_size=64,
        out=str(root / "runs"),
        name="digits",
        progress_bar=False,
        precision="32-true",
        checkpoint_every=0,
        model_options={"blocks_per_stage": (1, 1, 1)},
    )
    return train(config).run_dir


@pytest.fixture
def copied_run(digits_run, tmp_path):
    """A copy of the run that a test may damage; file times are copied too."""
    return Path(shutil.copytree(digits_run, tmp_path / "run"))


@pytest.fixture
def image_files(tmp_path):
    """Two readable images around an unreadable one, as a folder of photos holds them."""
    rng = np.random.default_rng(0)
    good = [tmp_path / "a.png", tmp_path / "c.png"]
    for path, size in zip(good, [(32, 32), (20, 30)], strict=True):
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(path)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    return [str(good[0]), str(bad), str(good[1])]


def test_predict_prints_every_readable_file_and_one_line_per_unreadable_one(
    digits_run, image_files, capsys
):
    a, bad, c = image_files
    missing = str(Path(a).with_name("missing.png"))

    assert main(["predict", str(digits_run), a, bad, c, missing]) == 1
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == [a, c]
    errors = err.strip().splitlines()
    assert len(errors) == 2
    assert bad in errors[0] and "not in an image format" in errors[0]
    assert missing in errors[1] and "not found" in errors[1]

    assert main(["predict", str(digits_run), a, c]) == 0
    assert capsys.readouterr().err == ""


def test_predict_json_lists_an_unreadable_file_with_its_error(digits_run, image_files, capsys):
    assert main(["predict", str(digits_run), *image_files, "--json"]) == 1
    entries = json.loads(capsys.readouterr().out)
    assert [e["file"] for e in entries] == image_files
    assert "top" in entries[0] and "top" in entries[2]
    assert "top" not in entries[1] and "not in an image format" in entries[1]["error"]


def test_an_unreadable_file_leaves_the_others_predictions_as_they_were(digits_run, image_files):
    a, bad, c = image_files
    predictor = Predictor(digits_run, precision="32-true", backend="torch")
    alone = predictor.predict_files([a, c], top_k=3)
    mixed = predictor.predict_files([bad, a, bad, c], top_k=3)
    assert [p.error is None for p in mixed] == [False, True, False, True]
    assert (mixed[0].classes, mixed[0].probabilities) == ([], [])
    for expected, actual in zip(alone, mixed[1::2], strict=True):
        assert actual.classes == expected.classes
        assert actual.probabilities == pytest.approx(expected.probabilities, abs=1e-6)


@pytest.mark.parametrize(
    ("left", "expected"),
    [
        ("checkpoints", "has no finished model"),
        ("nothing", "stopped before its first checkpoint"),
    ],
)
def test_evaluate_says_how_to_finish_a_run_without_a_model(copied_run, capsys, left, expected):
    shutil.rmtree(copied_run / "model")
    if left == "nothing":
        shutil.rmtree(copied_run / "checkpoints")

    assert main(["evaluate", str(copied_run)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err
    if left == "checkpoints":
        assert f"resnets train --resume {copied_run}" in err


def test_a_model_older_than_the_newest_checkpoint_is_used_with_a_warning(copied_run, caplog):
    checkpoints = copied_run / "checkpoints"
    saved = torch.load(checkpoints / "last.ckpt", weights_only=True)
    earlier = {**saved, "global_step": saved["global_step"] - 5}
    torch.save(earlier, checkpoints / "step.ckpt")  # written last, as a copy may order them
    with caplog.at_level(logging.WARNING):
        Predictor(copied_run, precision="32-true")
    assert "older than" not in caplog.text  # the model trained the most steps of any

    torch.save({**saved, "global_step": saved["global_step"] + 5}, checkpoints / "interrupted.ckpt")
    past = checkpoints.stat().st_mtime - 60  # and written first: steps count, not file times
    os.utime(checkpoints / "interrupted.ckpt", (past, past))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        Predictor(copied_run / "model", precision="32-true")
    lines = [r.getMessage() for r in caplog.records if "older than" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "interrupted.ckpt" in lines[0] and f"--resume {copied_run}" in lines[0]


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_checkpoint_file_given_for_the_run_names_the_run_directory(
    digits_run, image_files, capsys, command
):
    checkpoint = digits_run / "checkpoints" / "last.ckpt"
    files = image_files[:1] if command == "predict" else []

    assert main([command, str(checkpoint), *files]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "expected a run or model directory" in err and "training checkpoint" in err
    assert err.endswith(f"pass the run directory instead: {digits_run}")


def test_test_flip_is_refused_for_a_model_trained_on_digits(digits_run, image_files, capsys):
    assert main(["predict", str(digits_run), image_files[0], "--test-flip"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "trained on digits" in err and "never mirrors" in err and "drop --test-flip" in err
    assert main(["evaluate", str(digits_run), "--test-flip"]) == 2
    assert Predictor(digits_run, test_flip=False).test_flip is False


def test_test_flip_is_refused_where_the_model_records_that_training_never_flipped(
    digits_run, tmp_path
):
    """A model directory on its own, with no run config beside it: its preprocessing says."""
    model = Path(shutil.copytree(digits_run / "model", tmp_path / "model"))
    config = json.loads((model / "config.json").read_text())
    assert config["preprocessing"]["flip"] is False  # training records it
    with pytest.raises(UsageError, match="drop --test-flip"):
        Predictor(model, test_flip=True)

    del config["preprocessing"]["flip"]  # as models saved before it was recorded
    (model / "config.json").write_text(json.dumps(config))
    assert Predictor(model, test_flip=True).test_flip is True  # nothing says it was not mirrored


def test_the_onnx_backend_refuses_a_precision_it_cannot_run(digits_run):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    with pytest.raises(UsageError, match="float32 only.*--backend torch"):
        Predictor(digits_run, backend="onnx", precision="bf16-mixed")
    assert Predictor(digits_run, backend="onnx", precision="32-true").backend == "onnx"


def test_compile_is_refused_by_the_onnx_backend_and_steers_auto_to_torch(digits_run):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    with pytest.raises(UsageError, match="drop --compile, or pass --backend torch"):
        Predictor(digits_run, backend="onnx", compile=True)
    assert Predictor(digits_run, precision="32-true").backend == "onnx"  # auto, float32
    assert Predictor(digits_run, precision="32-true", compile=True).backend == "torch"


def test_the_onnx_backend_says_nothing_about_a_precision_nobody_asked_for(
    digits_run, image_files, capsys, caplog
):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    with caplog.at_level(logging.INFO):
        assert main(["predict", str(digits_run), image_files[0], "--backend", "onnx"]) == 0
    said = caplog.text + capsys.readouterr().err
    assert "float32" not in said and "precision" not in said


def test_an_unknown_precision_lists_auto_among_the_choices(digits_run, image_files, capsys):
    assert main(["predict", str(digits_run), image_files[0], "--precision", "bf17"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected auto or one of" in err and "bf16" in err


def test_compile_on_a_cpu_drops_the_warning_about_a_missing_cuda_runtime(digits_run):
    Predictor(digits_run, precision="32-true", backend="torch", compile=True)
    logger = logging.getLogger("torch.utils.cpp_extension")
    seen = []
    handler = logging.Handler()
    handler.emit = seen.append
    logger.addHandler(handler)
    try:
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        logger.warning("some other note from the C++ toolchain")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in seen] == ["some other note from the C++ toolchain"]


def test_evaluate_on_other_data_keeps_the_runs_own_evaluation(copied_run, capsys):
    assert main(["evaluate", str(copied_run)]) == 0
    own = copied_run / "evaluation" / "predictions.csv"
    written = own.read_bytes()
    assert f"written to {copied_run / 'evaluation'}" in capsys.readouterr().out

    assert main(["evaluate", str(copied_run), "--data", "digits", "--no-test-flip"]) == 0
    other = copied_run / "evaluation-digits"
    assert (other / "confusion.png").is_file() and (other / "predictions.csv").is_file()
    assert f"written to {other}" in capsys.readouterr().out
    assert own.read_bytes() == written


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (None, "evaluation"),
        ("digits", "evaluation-digits"),
        ("cifar10:/data/cifar-10-batches-py", "evaluation-cifar10"),
        ("folder:/data/images_test", "evaluation-images_test"),
        ("folder:/data/photos/test/", "evaluation-photos-test"),
        ("folder:/data/my photos", "evaluation-my-photos"),
    ],
)
def test_each_dataset_gets_its_own_evaluation_folder(data, name):
    from resnets.cli.evaluate import evaluation_dir

    assert evaluation_dir(Path("runs/r"), data) == Path("runs/r") / name
