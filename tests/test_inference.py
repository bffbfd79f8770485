"""The predictor's backends and test-time flip, and the training options that feed them."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.optim.swa_utils import AveragedModel

from resnets.cli.main import main
from resnets.inference import Predictor
from resnets.train import TrainConfig, train
from resnets.train.callbacks import WeightAverage
from resnets.train.fit import load_training_data, read_run_config, resolve_recipe


@pytest.fixture(scope="module")
def averaged_run(tmp_path_factory):
    """Two epochs with a weight average and test-time flip: the fast recipe's extras."""
    from conftest import make_image_folder

    root = tmp_path_factory.mktemp("averaged")
    folder = make_image_folder(root / "shapes", per_class=24)
    config = TrainConfig(
        model="resnet20",
        data=f"folder:{folder}",
        epochs=2,
        batch_size=16,
        val_size=8,
        ema_decay=0.5,
        test_flip=True,
        out=str(root / "runs"),
        name="averaged",
        progress_bar=False,
        precision="32-true",
        model_options={"blocks_per_stage": (1, 1, 1)},
    )
    return train(config)


def uint8_images(n=6, size=16, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def test_onnx_backend_gives_the_torch_float32_logits(averaged_run):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    images = uint8_images()
    torch_logits = Predictor(averaged_run.run_dir, precision="32-true", backend="torch")
    onnx_logits = Predictor(averaged_run.run_dir, backend="onnx")
    assert onnx_logits.backend == "onnx" and onnx_logits.dtype == torch.float32
    expected = torch_logits.logits(images)
    assert (onnx_logits.logits(images) - expected).abs().max() < 1e-4
    assert expected.std() > 1e-3  # the logits differ from image to image: a real comparison


def test_test_flip_averages_each_image_with_its_mirror(averaged_run):
    images = uint8_images()
    plain = Predictor(averaged_run.run_dir, precision="32-true", test_flip=False)
    flipped = Predictor(averaged_run.run_dir, precision="32-true", test_flip=True)
    expected = (plain.logits(images) + plain.logits(images.flip(3))) / 2
    assert torch.allclose(flipped.logits(images), expected, atol=1e-5)
    assert not torch.allclose(plain.logits(images), expected, atol=1e-3)


def test_a_run_trained_with_test_flip_predicts_with_it_by_default(averaged_run):
    config = json.loads((averaged_run.run_dir / "model" / "config.json").read_text())
    assert config["preprocessing"]["test_flip"] is True
    assert Predictor(averaged_run.run_dir).test_flip is True


def test_the_saved_model_and_the_checkpoint_hold_the_averaged_weights(averaged_run):
    checkpoint = torch.load(
        averaged_run.run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu"
    )
    average, current = checkpoint["state_dict"], checkpoint["current_model_state"]
    name = "model.stem.0.conv.weight"
    assert name in average, sorted(average)[:5]
    assert not torch.allclose(average[name], current[name])  # decay 0.5 lags the weights
    saved = load_file(averaged_run.run_dir / "model" / "model.safetensors")
    assert torch.equal(saved["stem.0.conv.weight"], average[name])


def test_validation_scored_the_saved_model_as_the_predictor_runs_it(averaged_run):
    """The last validation loss is that of the averaged weights with the flip: the saved
    model, as `Predictor` runs it by default, gives the same loss on the held-out images."""
    config = TrainConfig.from_dict(read_run_config(averaged_run.run_dir)["train"])
    held_out = load_training_data(config).held_out
    predictor = Predictor(averaged_run.run_dir, precision="32-true", backend="torch")
    loss = F.cross_entropy(predictor.logits(held_out.images), held_out.labels).item()
    assert loss == pytest.approx(averaged_run.rows[-1]["val_loss"], abs=1e-4)
    unflipped = Predictor(averaged_run.run_dir, precision="32-true", test_flip=False)
    other = F.cross_entropy(unflipped.logits(held_out.images), held_out.labels).item()
    assert abs(other - loss) > 1e-3  # the flip changes the loss: the check can fail


def test_weight_average_swaps_back_before_an_interrupted_run_is_saved():
    model = nn.Linear(3, 2)
    callback = WeightAverage(0.9)
    callback._average_model = AveragedModel(model, use_buffers=True)
    with torch.no_grad():
        model.weight.add_(1.0)  # the trained weights move away from the average
    trained = model.weight.clone()
    callback.on_validation_epoch_start(None, model)
    assert not torch.equal(model.weight, trained)  # the average is in place for validation
    callback.on_exception(None, model, KeyboardInterrupt())
    assert torch.equal(model.weight, trained)


def test_weight_average_ramps_its_decay_up():
    """After n updates the average moves by 1 - min(decay, (1 + n) / (10 + n)) of the gap."""
    model = nn.Linear(1, 1, bias=False)
    averaged = AveragedModel(model, avg_fn=WeightAverage(0.99)._kwargs["avg_fn"])
    for n, target in enumerate([1.0, 2.0]):
        with torch.no_grad():
            model.weight.fill_(target)
        before = averaged.module.weight.item()
        averaged.update_parameters(model)
        if n == 0:
            assert averaged.module.weight.item() == target  # the first update copies
        else:
            rate = min(0.99, (1 + n) / (10 + n))
            assert averaged.module.weight.item() == pytest.approx(
                before + (target - before) * (1 - rate)
            )


def test_test_flip_is_refused_for_data_never_mirrored_in_training(capsys):
    assert main(["train", "--data", "digits", "--test-flip", "--epochs", "1"]) == 2
    assert "never mirrored" in capsys.readouterr().err


def test_the_fast_recipe_and_its_limits():
    recipe = resolve_recipe(TrainConfig(data="folder:x", recipe="fast", epochs=3))
    assert (recipe.epochs, recipe.label_smoothing, recipe.test_flip) == (3, 0.1, True)
    assert recipe.ema_decay > 0 and recipe.lr > 0.1
    assert main(["train", "--recipe", "fast", "--print-config"]) == 2  # digits: not its data


def test_compiled_predictor_gives_the_eager_logits(averaged_run):
    images = uint8_images()
    eager = Predictor(averaged_run.run_dir, precision="32-true", backend="torch")
    compiled = Predictor(averaged_run.run_dir, precision="32-true", backend="torch", compile=True)
    assert (compiled.logits(images) - eager.logits(images)).abs().max() < 1e-4
    assert compiled.model is not compiled._eager  # it compiled, rather than fell back
