"""Tiny data made in the tests: nothing here reads ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ddcli.cli import app
from ddcli.data import Dataset

CLASSES = ["cat", "dog", "frog"]


def class_images(n_per_class: int, size: int = 8, channels: int = 3, seed: int = 0,
                 classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images whose class shows in its colour (channel c bright) plus noise."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(classes):
        base = np.full((n_per_class, size, size, channels), 60.0)
        base[..., c % channels] += 120.0
        if channels == 1:
            base[...] = 40.0 + 70.0 * c
        base += rng.normal(0, 25, base.shape)
        xs.append(np.clip(base, 0, 255).astype(np.uint8))
        ys.append(np.full(n_per_class, c, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def write_shards(folder: Path, n_train: int = 12, n_test: int = 6, size: int = 8,
                 channels: int = 3, classes: list[str] | None = None) -> Path:
    classes = classes or CLASSES
    folder.mkdir(parents=True, exist_ok=True)
    x, y = class_images(n_train, size, channels, seed=1, classes=len(classes))
    half = len(y) // 2
    perm = np.random.default_rng(0).permutation(len(y))
    np.savez_compressed(folder / "train_1.npz", images=x[perm[:half]], labels=y[perm[:half]])
    np.savez_compressed(folder / "train_2.npz", images=x[perm[half:]], labels=y[perm[half:]])
    xt, yt = class_images(n_test, size, channels, seed=2, classes=len(classes))
    np.savez_compressed(folder / "test.npz", images=xt, labels=yt)
    (folder / "classes.json").write_text(json.dumps(classes))
    return folder


def write_image_folder(root: Path, n: int = 4, size: int = 8, mode: str = "RGB",
                       classes: list[str] | None = None) -> Path:
    from PIL import Image

    classes = classes or CLASSES
    x, y = class_images(n, size, 3, seed=3, classes=len(classes))
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        d = root / classes[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).convert(mode).save(d / f"img{i:03d}.png")
    return root


def tiny_dataset(n: int = 10, size: int = 8, channels: int = 3, classes: int = 3) -> Dataset:
    x, y = class_images(n, size, channels, classes=classes)
    return Dataset(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y),
                   [f"c{i}" for i in range(classes)], name="tiny")


def tiny_dit_pipeline(folder: Path, id2label: dict[str, str]) -> Path:
    """A tiny class-conditional DiTPipeline (3 classes, 4x4x4 latents, 8 px images) saved in
    ``folder``, with ``id2label`` in its model_index.json as the Hub's layout has it."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                out_channels=8, num_layers=1, sample_size=4, patch_size=2,
                                num_embeds_ada_norm=3)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        block_out_channels=(8, 8), norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    DiTPipeline(transformer=dit, vae=vae, scheduler=DDIMScheduler(),
                id2label={0: "a", 1: "b", 2: "c"}).save_pretrained(str(folder))
    index = folder / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "id2label": id2label}))
    return folder


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    return write_shards(tmp_path / "shards")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "imgs")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDCLI_CACHE", str(tmp_path / "cache"))


class Run:
    def __init__(self, result):
        self.code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.exception = result.exception

    def json(self):
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"exit {self.code}\nstdout: {self.stdout}\nstderr: {self.stderr}"


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str | Path) -> Run:
        return Run(runner.invoke(app, [str(a) for a in args]))

    return invoke


def assert_one_line_error(run: Run, code: int, *fragments: str) -> None:
    assert run.code == code, run
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, run
    assert "Traceback" not in run.stderr
    for f in fragments:
        assert f in errors[0], run


@pytest.fixture
def bundle_file(tmp_path):
    """A small bundle (tests/test_bundle.py's make_bundle) saved to a file."""
    from test_bundle import make_bundle

    from ddcli.bundle import save_bundle

    path = tmp_path / "b.safetensors"
    save_bundle(make_bundle(), path)
    return path
