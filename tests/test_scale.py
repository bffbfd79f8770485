"""Data-parallel training on the CPU, and runs repeated from their YAML config."""

import csv
import json
import subprocess
import sys

import pytest
from conftest import resume_to_the_end


def _train(tmp_path, *args):
    command = [
        sys.executable,
        "-m",
        "resnets",
        "train",
        "--out",
        str(tmp_path),
        "--precision",
        "32-true",
        "--set",
        "zero_init_residual=false",
        *args,
    ]
    process = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stderr
    return process


def _rows(run_dir):
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


def test_two_processes_agree_count_each_test_image_once_and_match_one_process(tmp_path):
    process = _train(
        tmp_path, "--devices", "2", "--accelerator", "cpu", "--epochs", "2", "--name", "two"
    )
    assert process.stdout.count("accuracy") == 1  # rank zero alone reports
    replicas = json.loads((tmp_path / "two" / "replicas.json").read_text())
    assert replicas["world_size"] == 2 and replicas["identical"]
    assert sum(replicas["val_images_per_rank"]) == 360  # the digits test split, once each
    _train(tmp_path, "--epochs", "2", "--name", "one")
    two, one = _rows(tmp_path / "two")[-1], _rows(tmp_path / "one")[-1]
    assert abs(float(two["val_acc"]) - float(one["val_acc"])) < 0.15
    config = (tmp_path / "two" / "config.yaml").read_text()
    assert "global_batch_size: 64" in config and "per_device_batch_size: 32" in config


def test_two_processes_with_a_weight_average_end_with_identical_replicas(tmp_path):
    """Each rank's batch-norm statistics differ after a step; the average that is saved must
    be the same on every rank (validation broadcasts rank zero's statistics)."""
    _train(
        tmp_path, "--devices", "2", "--accelerator", "cpu", "--epochs", "1", "--name", "ema",
        "--ema-decay", "0.9", "--batch-size", "128",
    )  # fmt: skip
    replicas = json.loads((tmp_path / "ema" / "replicas.json").read_text())
    assert replicas["identical"]
    assert (tmp_path / "ema" / "model" / "model.safetensors").is_file()


def test_config_file_reproduces_a_run(tmp_path):
    _train(tmp_path, "--epochs", "1", "--name", "first", "--batch-size", "128")
    _train(tmp_path, "--config", str(tmp_path / "first" / "config.yaml"), "--name", "again")
    first, again = _rows(tmp_path / "first"), _rows(tmp_path / "again")
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert [r[key] for r in first] == [r[key] for r in again]


@pytest.mark.parametrize("bad", ["zero_init_residual", "=3"])
def test_bad_model_option_is_a_usage_error(bad):
    process = subprocess.run(
        [sys.executable, "-m", "resnets", "train", "--set", bad],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 2 and "KEY=VALUE" in process.stderr


def test_sigterm_to_every_process_stops_them_all_after_the_same_step_and_resumes(tmp_path):
    """A cluster stopping a job signals every rank at once; Lightning's own handler could
    then wait for ever inside a collective. All ranks must stop, save and exit."""
    import os
    import signal
    import time

    import torch

    command = [sys.executable, "-m", "resnets", "train", "--devices", "2", "--accelerator"]
    command += ["cpu", "--epochs", "3", "--batch-size", "32", "--checkpoint-every", "10"]
    command += ["--out", str(tmp_path), "--name", "cut", "--precision", "32-true"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    step_checkpoint = tmp_path / "cut" / "checkpoints" / "step.ckpt"
    deadline = time.time() + 300
    while not step_checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)  # rank zero and the process it launched
    try:
        _, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("the ranks did not stop within 2 minutes of SIGTERM")
    assert process.returncode == 128 + signal.SIGTERM, stderr.decode()  # stopped, not failed
    assert "stopped by SIGTERM" in stderr.decode() and "checkpoint saved" in stderr.decode()
    assert "error:" not in stderr.decode()
    saved = torch.load(tmp_path / "cut" / "checkpoints" / "interrupted.ckpt", weights_only=True)
    last = resume_to_the_end(tmp_path / "cut")
    steps_per_epoch = 1437 // 2 // 16 + 1  # per rank: 44 batches of 16 and one of 14
    assert saved["global_step"] < last["global_step"] == 3 * steps_per_epoch
