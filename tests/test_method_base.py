"""The defaults of :class:`lrfer.methods.base.Method` that every method without its own version relies on."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lrfer.methods.base import Method, MethodContext


def _context() -> MethodContext:
    return MethodContext(num_classes=3, input_size=4, native_size=4, in_channels=1, train_degradations=[])


class FactorScaled(Method):
    """Logits ``fc(image) * factor``: a prediction that depends on the image and on its factor."""

    def __init__(self) -> None:
        super().__init__(_context(), epochs=1, label_smoothing=0.0)
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)
        self.heads = nn.ModuleDict({"a": nn.Linear(3, 3), "act": nn.ReLU()})
        self.extra = nn.ModuleList([nn.Linear(3, 2)])
        self.act = nn.ReLU()

    def predict(self, images: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(images.flatten(1)) * factor[:, None]


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "image": torch.randn(3, 1, 2, 2, generator=g),
        "label": torch.tensor([0, 2, 1]),
        "factor": torch.tensor([1.0, 2.0, 4.0]),
    }


def test_the_networks_to_compile_are_the_children_with_parameters_containers_replaced_by_their_members():
    method = FactorScaled()
    assert method.networks() == [method.fc, method.heads["a"], method.extra[0]]


def test_the_default_steps_classify_each_image_with_its_factor_and_hand_the_logits_to_the_trainer():
    """Training: cross-entropy of ``predict(image, factor)``, its logits returned (detached) for the training
    accuracy; evaluation: the same logits."""
    method, batch = FactorScaled(), _batch()
    expected = method.predict(batch["image"], batch["factor"])
    out = method.training_step(batch, method.stages()[0], "main")
    assert torch.equal(out["logits"], expected) and not out["logits"].requires_grad
    assert out["loss"].item() == F.cross_entropy(expected, batch["label"]).item()
    assert torch.equal(method.evaluate_step(batch)["logits"], expected)
