"""Linear-probe evaluation on a frozen backbone, and classifier inheritance (methods.md §4.1,
§4.3).

* ``linear-probe``: N fresh linear heads (init N(0, 0.01²)) trained on the backbone features of
  the distilled images, augmented every epoch (flip + RandomResizedCrop), Adam
  lr 1e-3·batch/256, cosine schedule, batch min(100, n), a fixed number of epochs; the last
  epoch's heads are tested. (The reference stops early on test accuracy; ddcli never selects
  on the test set.) Test images as the reference's (LGM ``eval.py``) test loader shows them:
  ``Resize(256)`` + ``CenterCrop(224)``, i.e. the central 224/256 of each side resized to the
  backbone's input; the cosine schedule steps once per epoch, as there.
* ``inherit``: the bundle's golden head (trained on the full real features of the distillation
  backbone φ_d) stays frozen; a fresh linear projector Π(z) = A z + a: φ_e -> φ_d (PyTorch's
  default init, with bias, as SFM's ``eval_syn.py``) is learnt with MSE(Π(φ_e(x)), φ_d(x)) on
  augmented distilled images; predictions W*·Π(φ_e(x)) + b*. Also when φ_e = φ_d the projector
  starts fresh: starting it at the identity (0.1.0) made its MSE gradient zero and the score
  the golden head's, whatever the images.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ddcli.backbones import Backbone
from ddcli.methods.backbone_base import random_resized_crop
from ddcli.training import accuracy_report

#: the reference's test view: ``Resize(256)`` then ``CenterCrop(224)`` keeps the central 7/8
TEST_CENTER_CROP = 224 / 256


def linear_probe(
    train_pixels: torch.Tensor,
    train_labels: torch.Tensor,
    test_pixels: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    bb: Backbone,
    *,
    num_models: int,
    epochs: int,
    seed: int,
    device: torch.device,
    golden: tuple[torch.Tensor, torch.Tensor] | None = None,
    golden_bb: Backbone | None = None,
    class_counts: list[int] | None = None,
    progress: Callable[..., None] | None = None,
    test_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Train ``num_models`` heads (or projectors, with ``golden``) and test them;
    ``progress(epoch)`` follows the training, ``test_progress(done, total)`` the test
    images' features."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    x = train_pixels.to(device).float()
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    y = train_labels.to(device)
    n = x.shape[0]
    bs = min(100, n)
    inherit = golden is not None
    d_e = bb.feature_dim
    if inherit:
        w_star, b_star = (t.to(device) for t in golden)
        d_d = w_star.shape[1]
        bound = 1 / d_e**0.5  # nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        proj = (torch.rand((num_models, d_d, d_e), generator=gen, device=device) * 2 - 1) * bound
        proj_b = (torch.rand((num_models, d_d), generator=gen, device=device) * 2 - 1) * bound
        params = [proj.requires_grad_(True), proj_b.requires_grad_(True)]
        lr = 0.01 * bs / 256
    else:
        w = torch.randn((num_models, num_classes, d_e), generator=gen, device=device) * 0.01
        b = torch.zeros((num_models, num_classes), device=device)
        params = [w.requires_grad_(True), b.requires_grad_(True)]
        lr = 1e-3 * bs / 256
    opt = torch.optim.Adam(params, lr=lr)
    work = epochs * n * num_models  # images through the backbone(s) while training
    bb.plan_inference(work)
    if inherit and golden_bb is not bb:
        golden_bb.plan_inference(work)
    # stepped once per epoch, as the reference's Evaluator (the same as per batch up to 100
    # images, which are one batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1))
    t0 = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.rand((num_models, n), generator=gen, device=device).argsort(1)
        for s in range(0, n, bs):
            idx = perm[:, s : s + bs]
            views = random_resized_crop(x[idx.flatten()], bb.input_size, gen)
            f_e = bb.infer(bb.normalize(views)).view(num_models, -1, d_e)
            if inherit:
                if golden_bb is bb:  # the distillation backbone itself: the same features
                    f_d = f_e
                else:
                    with torch.no_grad():
                        vd = views if golden_bb.input_size == bb.input_size else F.interpolate(
                            views, size=golden_bb.input_size, mode="bilinear",
                            align_corners=False)
                        f_d = golden_bb.infer(golden_bb.normalize(vd)).view(num_models, -1, d_d)
                projected = torch.einsum("mde,mne->mnd", proj, f_e) + proj_b[:, None, :]
                loss = F.mse_loss(projected, f_d,
                                  reduction="none").mean(dim=(1, 2)).sum()
            else:
                logits = torch.einsum("mce,mne->mnc", w, f_e) + b[:, None, :]
                loss = F.cross_entropy(logits.flatten(0, 1), y[idx.flatten()],
                                       reduction="none").view(num_models, -1).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if progress:
            progress(epoch + 1)
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        f_test = bb.embed_all(test_pixels, device, progress=test_progress,
                              center_crop=TEST_CENTER_CROP)
        if inherit:
            projected = torch.einsum("mde,ne->mnd", proj, f_test) + proj_b[:, None, :]
            logits = projected @ w_star.T + b_star
        else:
            logits = torch.einsum("mce,ne->mnc", w, f_test) + b[:, None, :]
        preds = logits.argmax(-1)
    report = accuracy_report(preds, test_labels.to(device), num_classes, class_counts)
    report.update(
        mode="inherit: frozen golden head + learnt projector" if inherit
        else "linear-probe: fresh linear heads",
        # the heads are stacked: one generator seeded with ``seed`` draws every model's
        # initialisation, batch order and views in turn (no per-model seed to report)
        model_seeds=None,
        generator_seed=seed,
        # the protocol records the reference's base values (lr 1e-3, batch up to 100): these
        # ran (lr scaled by batch / 256, batch min(100, n); 0.01 for --inherit's projector)
        lr=lr,
        batch_size=bs,
        lr_schedule="cosine, stepped per epoch",
        test_center_crop=round(TEST_CENTER_CROP, 4),
        train_time_s=round(train_s, 3),
        train_time_per_model_s=round(train_s / num_models, 3),
        num_train_images=n,
        backbone=bb.identity,
        backbone_compiled=bb.compiled,
        backbone_compile_fallback=bb.compile_error,
        batched=True,
    )
    return report


@torch.no_grad()
def golden_head_accuracy(golden: tuple[torch.Tensor, torch.Tensor], bb: Backbone,
                         test_pixels: torch.Tensor, test_labels: torch.Tensor,
                         device: torch.device) -> float:
    """Test accuracy of the golden head itself (the full-data linear probe: the ceiling)."""
    w, b = (t.to(device) for t in golden)
    f = bb.embed_all(test_pixels, device, center_crop=TEST_CENTER_CROP)
    return round(float(((f @ w.T + b).argmax(1) == test_labels.to(device)).float().mean()) * 100,
                 2)


@torch.no_grad()
def centroid_indices(feats: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     ipc: int) -> torch.Tensor:
    """Per class, the ``ipc`` real images whose features lie nearest the class mean."""
    keep = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        d = (feats[idx] - feats[idx].mean(0, keepdim=True)).norm(dim=1)
        keep.append(idx[d.argsort()[:ipc]])
    return torch.cat(keep)
