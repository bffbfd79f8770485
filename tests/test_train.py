import csv
import json
import subprocess
import sys

import pytest
import torch
import yaml

from resnets.cli.main import main
from resnets.inference import Predictor
from resnets.train import TrainConfig, train


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    from conftest import make_image_folder

    root = tmp_path_factory.mktemp("train")
    folder = make_image_folder(root / "shapes", per_class=48)
    config = TrainConfig(
        model="resnet20",
        data=f"folder:{folder}",
        epochs=10,
        batch_size=16,
        lr=0.4,
        val_size=16,
        out=str(root / "runs"),
        name="shapes",
        progress_bar=False,
        precision="32-true",
        model_options={"zero_init_residual": False, "blocks_per_stage": (1, 1, 1)},
    )
    return train(config), folder


def test_training_writes_the_run_directory(shapes_run):
    result, _ = shapes_run
    run = result.run_dir
    for name in (
        "config.yaml",
        "metrics.csv",
        "curves.png",
        "model/config.json",
        "model/model.safetensors",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
    ):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 11))
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 9  # the last epoch, whether or not its accuracy was the best
    assert all(float(r["images_per_s"]) > 0 for r in rows)
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["class_names"] == ["circle", "square"]
    assert config["preprocessing"]["image_size"] == [16, 16]


def test_trained_model_predicts_files_with_their_class_names(shapes_run):
    result, folder = shapes_run
    files = sorted(folder.glob("*/*.png"))
    predictions = Predictor(result.run_dir, precision="32-true").predict_files(files, top_k=2)
    correct = sum(p.classes[0] == f.parent.name for p, f in zip(predictions, files, strict=True))
    assert correct / len(files) >= 0.8
    assert all(abs(sum(p.probabilities) - 1) < 1e-4 for p in predictions)


def test_predict_cli_agrees_with_evaluate_cli(shapes_run, tmp_path, capsys):
    result, folder = shapes_run
    assert (
        main(
            ["evaluate", str(result.run_dir), "--data", f"folder:{folder}", "--out", str(tmp_path)]
        )
        == 0
    )
    evaluated = {
        r["file"]: r["predicted"] for r in csv.DictReader(open(tmp_path / "predictions.csv"))
    }
    files = sorted(evaluated)[:10]
    capsys.readouterr()
    assert main(["predict", str(result.run_dir), *files, "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert {p["file"]: p["top"][0]["class"] for p in predicted} == {f: evaluated[f] for f in files}
    assert (tmp_path / "confusion.png").stat().st_size > 0


def test_training_from_files_ends_with_the_weights_of_training_in_memory(tmp_path):
    from conftest import make_image_folder

    from resnets.weights import load_model_dir

    folder = make_image_folder(tmp_path / "shapes", per_class=20)
    results = {}
    for in_memory in (True, False):  # False: DataLoader workers decode each batch's files
        config = TrainConfig(
            data=f"folder:{folder}",
            in_memory=in_memory,
            epochs=2,
            batch_size=8,
            val_size=8,
            out=str(tmp_path),
            name=f"in-memory-{in_memory}",
            progress_bar=False,
            precision="32-true",
        )
        results[in_memory] = train(config)
    assert results[True].rows == [
        {**row, "images_per_s": ours["images_per_s"], "epoch_time_s": ours["epoch_time_s"]}
        for ours, row in zip(results[True].rows, results[False].rows, strict=True)
    ]
    weights = [load_model_dir(r.run_dir / "model").state_dict() for r in results.values()]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    saved = yaml.safe_load((results[False].run_dir / "config.yaml").read_text())
    assert saved["dataset"]["in_memory"] is False


def test_same_seed_gives_the_same_run_on_cpu(tmp_path):
    def run(name):
        config = TrainConfig(
            epochs=1,
            batch_size=64,
            out=str(tmp_path),
            name=name,
            progress_bar=False,
            precision="32-true",
            model="resnet20",
        )
        return train(config).rows[0]

    first, second = run("a"), run("b")
    assert first["train_loss"] == second["train_loss"]
    assert first["val_acc"] == second["val_acc"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--model", "resnet5O"], "resnet50"),
        (["train", "--data", "imagenet:/x"], "folder:PATH"),
        (["train", "--data", "folder:/no/such/folder"], "does not exist"),
        (["evaluate", "/no/such/run"], "does not exist"),
    ],
)
def test_user_errors_print_one_line_and_exit_non_zero(args, expected):
    process = subprocess.run(
        [sys.executable, "-m", "resnets", *args], capture_output=True, text=True, timeout=120
    )
    assert process.returncode in (1, 2)
    assert expected in process.stderr
    assert "Traceback" not in process.stderr
    assert len(process.stderr.strip().splitlines()) == 1


def test_empty_folder_and_single_class_folder_are_clear_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", f"folder:{tmp_path / 'empty'}"]) == 1
    assert "no class folders" in capsys.readouterr().err
    from conftest import make_image_folder

    make_image_folder(tmp_path / "one", classes=("only",), per_class=3)
    assert main(["train", "--data", f"folder:{tmp_path / 'one'}"]) == 1
    assert "at least 2" in capsys.readouterr().err


def test_images_smaller_than_the_model_shrinks_name_the_smallest_size(tmp_path, capsys):
    from conftest import make_image_folder

    make_image_folder(tmp_path / "tiny", per_class=3, size=8)
    code = main(
        [
            "train",
            "--model",
            "resnet18",
            "--data",
            f"folder:{tmp_path / 'tiny'}",
            "--out",
            str(tmp_path / "runs"),
        ]
    )
    assert code == 2
    assert "at least 32x32" in capsys.readouterr().err
    assert torch.get_num_threads() >= 1


def test_training_starts_from_a_model_directory_or_a_weights_file(shapes_run, tmp_path):
    from resnets.diagnostics.deepen import deepen
    from resnets.weights import load_model_dir, save_model_dir

    result, folder = shapes_run
    source = load_model_dir(result.run_dir / "model")
    save_model_dir(deepen(source, 1), tmp_path / "deeper", architecture="resnet20")
    common = [f"--data=folder:{folder}", "--val-size=16", "--epochs=1", "--lr=1e-9"]
    common += ["--warmup-epochs=0", "--precision=32-true", f"--out={tmp_path}"]

    assert main(["train", "--model", str(tmp_path / "deeper"), "--name=on", *common]) == 0
    trained_on = load_model_dir(tmp_path / "on" / "model")
    assert trained_on.config.blocks_per_stage == (1, 1, 2)
    stem = source.stem[0].conv.weight
    assert torch.allclose(trained_on.stem[0].conv.weight, stem, atol=1e-6)

    weights = str(result.run_dir / "model" / "model.safetensors")
    args = ["--set=blocks_per_stage=[1,1,1]", "--set=zero_init_residual=false"]
    assert main(["train", "--weights", weights, *args, "--name=init", *common]) == 0
    assert torch.allclose(load_model_dir(tmp_path / "init" / "model").stem[0].conv.weight, stem)

    assert main(["train", "--weights", str(tmp_path / "missing.pth"), *common]) == 2


@pytest.mark.parametrize(
    "args, code, expected",
    [
        (["--devices", "0"], 2, "--devices must be a positive count"),
        (["--num-nodes", "0"], 2, "--num-nodes must be at least 1"),
        (["--precision", "99"], 2, "--precision must be one of"),
        (["--accelerator", "tpu9"], 2, "--accelerator must be one of"),
        (["--image-size", "0"], 2, "--image-size must be at least 1"),
        (["--val-size", "0"], 2, "--val-size must be a fraction"),
        (["--val-size", "2.5"], 2, "or a whole number"),
        (["--weight-decay", "-1"], 2, "--weight-decay must be 0 or more"),
        (["--warmup-epochs", "-1"], 2, "--warmup-epochs must be 0 or more"),
        (["--set", "shortcut=Z"], 2, "shortcut must be one of 'A', 'B', 'C', 'D'; got 'Z'"),
        (["--set", "zero_init_residual=maybe"], 2, "must be true or false"),
        (["--set", "width_multiplier=abc"], 2, "width_multiplier must be a number"),
        (["--set", "norm=foo"], 2, "norm must be one of"),
    ],
)
def test_bad_settings_are_one_line_usage_errors(args, code, expected, capsys, tmp_path):
    assert main(["train", *args, "--epochs", "1", f"--out={tmp_path}"]) == code
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


def test_a_flag_overrides_the_config_file_even_at_its_default_value(tmp_path, capsys):
    settings = tmp_path / "run.yaml"
    settings.write_text("model: resnet56\nepochs: 7\nseed: 3\n")
    args = ["train", "--config", str(settings), "--model", "resnet20", "--seed", "0"]
    assert main([*args, "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "model: resnet20" in printed and "seed: 0" in printed and "epochs: 7" in printed


def test_a_config_file_that_is_not_yaml_is_one_line(tmp_path, capsys):
    settings = tmp_path / "bad.yaml"
    settings.write_text("model: [resnet20\n")
    assert main(["train", "--config", str(settings)]) == 2
    assert "is not valid YAML" in capsys.readouterr().err


def test_training_takes_a_run_directory_as_its_model(shapes_run, tmp_path):
    result, folder = shapes_run
    args = [f"--data=folder:{folder}", "--val-size=16", "--epochs=1", f"--out={tmp_path}"]
    assert main(["train", "--model", str(result.run_dir), "--name=again", *args]) == 0
    saved = json.loads((tmp_path / "again" / "model" / "config.json").read_text())
    assert saved["architecture"] == "resnet20"


def test_predict_on_a_folder_classifies_every_image_under_it(shapes_run, tmp_path, capsys):
    result, folder = shapes_run
    assert main(["predict", str(result.run_dir), str(folder), "--top-k", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == sorted(str(p) for p in folder.rglob("*.png"))
    circles = [line.split()[1] for line in lines if "/circle/" in line]
    assert len(circles) == 48
    assert circles.count("circle") > 0.8 * len(circles)  # the model's answer, not a guess


def test_predict_on_an_empty_folder_or_a_non_image_says_what_it_expected(
    shapes_run, tmp_path, capsys
):
    result, _ = shapes_run
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    assert main(["predict", str(result.run_dir), str(tmp_path / "empty")]) == 1
    assert "is a folder with no image files in it" in capsys.readouterr().err
    (tmp_path / "notes.png").write_text("not an image")
    assert main(["predict", str(result.run_dir), str(tmp_path / "notes.png")]) == 1
    err = capsys.readouterr().err
    assert "not in an image format Pillow knows" in err and "BufferedReader" not in err


def test_evaluate_without_data_scores_only_the_held_out_images(shapes_run, tmp_path, capsys):
    result, _ = shapes_run
    assert main(["evaluate", str(result.run_dir), "--json", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 16  # --val-size 16 of the 96 images, none of the training ones
    assert report["data"].endswith("(held-out split)")


def test_evaluate_reads_a_folder_over_the_memory_budget_from_its_files(
    shapes_run, tmp_path, monkeypatch, capsys
):
    result, folder = shapes_run
    args = ["evaluate", str(result.run_dir), "--data", f"folder:{folder}", "--json"]
    assert main([*args, "--out", str(tmp_path / "in-memory")]) == 0
    in_memory = json.loads(capsys.readouterr().out)
    monkeypatch.setenv("RESNETS_MEMORY_BUDGET_GB", "0.000001")
    assert main([*args, "--out", str(tmp_path / "from-files")]) == 0
    from_files = json.loads(capsys.readouterr().out)
    assert in_memory["images"] == from_files["images"] == 96
    assert {**from_files, "out": None} == {**in_memory, "out": None}
    predictions = [
        (tmp_path / d / "predictions.csv").read_text() for d in ("in-memory", "from-files")
    ]
    assert predictions[0] == predictions[1]


@pytest.mark.parametrize(
    "text", ["epochs: ten\n", "lr: abc\n", "val_size: x\n", "model_options: 5\n", "train: 5\n"]
)
def test_a_config_file_with_a_wrongly_typed_value_is_one_line(text, tmp_path, capsys):
    settings = tmp_path / "bad.yaml"
    settings.write_text(text)
    assert main(["train", "--config", str(settings), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "must be a" in err or "should each hold a mapping" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--epochs", "-1"], "--epochs must be at least 1"),
        (["--model", "resnet2"], "unknown model"),
        (["--data", "foo"], "unknown dataset"),
        (["--set", "shortcut=Z"], "shortcut must be one of"),
    ],
)
def test_print_config_refuses_what_train_would_refuse(args, expected, capsys):
    assert main(["train", *args, "--print-config"]) == 2
    assert expected in capsys.readouterr().err


def test_a_taken_run_name_is_refused_before_any_data_is_read(shapes_run, capsys):
    result, _ = shapes_run
    out, name = str(result.run_dir.parent), result.run_dir.name
    args = ["train", "--out", out, "--name", name, "--data", "folder:/no/such/folder"]
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path, capsys):
    from conftest import make_image_folder

    folder = make_image_folder(tmp_path / "shapes")
    argv = ["train", "--data", f"folder:{folder}", "--val-size", "4", "--out", str(tmp_path)]
    argv += ["--batch-size", "4", "--lr", "1e30", "--precision", "32-true"]  # NaN at step 1 of 5
    assert main([*argv, "--name", "diverges"]) == 1
    assert "loss became" in (err := capsys.readouterr().err)
    assert "no checkpoint had been written yet" in err and "is kept" not in err
    assert not (tmp_path / "diverges").exists()  # the name is free for the corrected run


def test_a_val_size_that_leaves_nothing_to_train_on_is_one_line(tmp_path, capsys):
    from conftest import make_image_folder

    folder = make_image_folder(tmp_path / "shapes")  # 24 images
    assert main(["train", "--data", f"folder:{folder}", "--val-size", "24"]) == 1
    assert "24 of the 24 images" in capsys.readouterr().err


def test_a_failed_run_in_a_folder_that_was_already_there_leaves_it_as_it_was(tmp_path, capsys):
    from conftest import make_image_folder

    folder = make_image_folder(tmp_path / "shapes")
    mine = tmp_path / "runs" / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "checkpoints" / "notes.txt").write_text("the user's")
    (mine / "metrics.csv").write_text("the user's")
    argv = ["train", "--data", f"folder:{folder}", "--val-size", "4", "--batch-size", "4"]
    argv += ["--lr", "1e30", "--precision", "32-true", "--out", str(tmp_path / "runs")]
    assert main([*argv, "--name", "mine"]) == 1
    assert (mine / "checkpoints" / "notes.txt").read_text() == "the user's"
    assert (mine / "metrics.csv").exists()


def test_a_relative_data_path_is_recorded_absolute_so_the_run_works_from_anywhere(
    tmp_path, monkeypatch, capsys
):
    from conftest import make_image_folder

    make_image_folder(tmp_path / "work" / "shapes")
    monkeypatch.chdir(tmp_path / "work")
    args = ["train", "--data", "folder:shapes", "--val-size", "4", "--epochs", "1"]
    assert main([*args, "--out", "runs", "--name", "rel", "--precision", "32-true"]) == 0
    recorded = yaml.safe_load((tmp_path / "work" / "runs" / "rel" / "config.yaml").read_text())
    assert recorded["train"]["data"] == f"folder:{tmp_path / 'work' / 'shapes'}"
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "work" / "runs" / "rel")]) == 0
    assert "4 images from folder:" in capsys.readouterr().out


def test_train_and_predict_take_the_same_precision_spellings():
    from resnets.inference.predictor import PRECISIONS as PREDICT
    from resnets.train.fit import PRECISION_ALIASES
    from resnets.train.fit import PRECISIONS as TRAIN

    runnable = {name for name in TRAIN if name != "auto" and not name.startswith("64")}
    assert runnable | set(PRECISION_ALIASES) == set(PREDICT)
    assert TrainConfig(precision="fp16").precision == "16-mixed"
    assert TrainConfig(precision="fp32").precision == "32-true"
