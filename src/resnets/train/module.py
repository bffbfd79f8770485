"""The Lightning module: one ResNet, its loss, metrics, optimiser and schedule."""

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ..data.augment import normalize, random_crop_flip
from ..errors import TrainingError
from ..models.resnet import ResNet
from .recipes import Recipe


class NonFiniteLoss(TrainingError):
    """The loss became NaN or infinite; the run says which checkpoint it leaves."""

    REMEDY = "Lower --lr, add --warmup-epochs, or train in float32 with --precision 32-true"


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay conv and linear weights only: decaying norm scales and biases only shrinks
    them without regularising the function (Goyal et al. 2017; He et al. 2019, sec. 3.3)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class ClassifierModule(L.LightningModule):
    """Trains a ResNet on uint8 batches, augmenting and normalising them on the device."""

    def __init__(
        self,
        model: ResNet,
        recipe: Recipe,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        flip: bool,
        crop_padding: int,
        global_batch_size: int,
        channels_last: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.seed = seed
        self.model = model
        self.recipe = recipe
        self.flip, self.crop_padding = flip, crop_padding
        self.global_batch_size = global_batch_size
        self.channels_last = channels_last
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("std", torch.tensor(std), persistent=False)
        num_classes = model.config.num_classes
        self.train_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
        self.val_images_seen = 0  # on this rank, in the latest validation
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        if self.trainer is not None and self.trainer.training:
            images = random_crop_flip(images, self.crop_padding, self.flip, self._batch_generator())
        return normalize(images, self.mean, self.std, self.channels_last), labels

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.recipe.label_smoothing)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(
                f"the loss became {loss.item()} at step {self.global_step} (epoch "
                f"{self.current_epoch + 1})"
            )
        self.train_accuracy(logits.detach(), labels)
        self.log(
            "train_loss", loss, on_step=False, on_epoch=True, batch_size=len(labels), sync_dist=True
        )
        self.log("train_acc", self.train_accuracy, on_step=False, on_epoch=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self.val_images_seen = 0

    def validation_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        self.val_images_seen += len(labels)
        logits = self.model(images)
        if self.recipe.test_flip:  # as the saved model will predict
            logits = (logits + self.model(images.flip(3))) / 2
        loss = F.cross_entropy(logits, labels)
        self.val_accuracy(logits, labels)
        self.val_top5(logits, labels)
        self.log(
            "val_loss", loss, on_step=False, on_epoch=True, batch_size=len(labels), sync_dist=True
        )
        self.log("val_acc", self.val_accuracy, on_step=False, on_epoch=True)
        self.log("val_top5", self.val_top5, on_step=False, on_epoch=True)

    def _batch_generator(self) -> torch.Generator:
        """A generator for this batch's augmentation alone, seeded by (seed, rank, step).

        Its draws depend on nothing else that runs (data loaders, validation, a restore), so
        a run resumed anywhere, even mid-epoch, augments every later batch as the
        uninterrupted run did.
        """
        step, rank = self.trainer.global_step, self.trainer.global_rank
        generator = torch.Generator(device=self.device)
        return generator.manual_seed(
            ((self.seed * 1_000_003 + rank) * 1_000_000_007 + step) % 2**63
        )

    def configure_optimizers(self):
        recipe = self.recipe
        optimizer = torch.optim.SGD(
            parameter_groups(self.model, recipe.weight_decay),
            lr=recipe.peak_lr(self.global_batch_size),
            momentum=recipe.momentum,
            nesterov=recipe.nesterov,
        )
        # Not `trainer.estimated_stepping_batches`: that builds the training loader before a
        # checkpoint is restored, and the loader would then never receive its saved position.
        datamodule = self.trainer.datamodule
        if hasattr(datamodule, "train_steps_per_epoch"):
            steps_per_epoch = datamodule.train_steps_per_epoch()
        else:
            steps_per_epoch = self.trainer.estimated_stepping_batches // recipe.epochs
        steps_per_epoch = max(1, steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: recipe.lr_factor(step, steps_per_epoch)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
