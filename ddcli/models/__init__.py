"""Model registry (timm's pattern): ``@register_model``, ``create_model``, ``list_models``.

Every model maps images (N, C, H, W), normalised, to logits, and has ``embed(x)`` giving the
penultimate features and ``reset_parameters(generator)`` re-drawing all weights from a
``torch.Generator`` (so a seed reproduces a network; the clock is never used).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import torch.nn as nn

from ddcli.registry import MODELS

_MODELS = MODELS  # (ddcli.registry: it outlives an interrupted import of this package)


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        return _MODELS.add(name, fn)

    return deco


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style wildcard, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(
    name: str, num_classes: int, channels: int, image_size: tuple[int, int] | int, **kwargs
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models` (``convnet``, ``convnet-bn``, ``resnet18``, ...).
        num_classes: size of the classifier output.
        channels: input channels (1 or 3).
        image_size: input (H, W) or one int for square images.
        **kwargs: model-specific options (e.g. ``width``, ``depth`` for ConvNets).
    """
    if name not in _MODELS:
        from ddcli.errors import InputError

        raise InputError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    return _MODELS[name](num_classes=num_classes, channels=channels, image_size=tuple(image_size),
                         **kwargs)


from ddcli.models import convnet, resnet  # noqa: E402,F401  (registers the entrypoints)
