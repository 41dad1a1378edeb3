"""A model as people deploy it: it takes images as they have them, uint8 RGB pixels [N, 3, 32, 32], with the
training normalisation inside, and carries its class names. Training feeds the bare network normalised floats
((x/255 - mean) / std, mean = std = 0.5 per channel); a caller of the deployed model never has to know that.

    net = models.classifier("v6", torch.load("results/paper-grid/v6-seed0.pt", weights_only=True), data.CLASSES)
    net.classes[net(images_uint8).argmax(1)[0]]
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .registry import create_model

# The preprocessing every model of the zoo was trained with (the model's own config, as timm keeps one).
PREPROCESSING = {"input_size": (3, 32, 32), "input_dtype": "uint8", "pixel_range": (0, 255),
                 "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


class ImageClassifier(nn.Module):
    """`model` behind the training normalisation: uint8 [N, 3, H, W] in, logits [N, classes] out. Computed as
    x / (255 std) - mean / std, which for mean = std = 0.5 is exactly training's x / 127.5 - 1 in float32."""

    def __init__(self, model: nn.Module, classes: Sequence[str], mean=PREPROCESSING["mean"],
                 std=PREPROCESSING["std"]):
        super().__init__()
        self.model, self.classes = model, tuple(classes)
        self.register_buffer("scale", 255.0 * torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).to(torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(torch.float32).div(self.scale).sub(self.shift))


def classifier(variant: str, state_dict: dict, classes: Sequence[str]) -> ImageClassifier:
    """A trained model of `variant` (its weights as a state dict, e.g. a published <variant>-seed<k>.pt) that
    classifies uint8 images, in eval mode."""
    model = create_model(variant)
    model.load_state_dict(state_dict)
    return ImageClassifier(model, classes).eval()
