"""SFM: statistical flow matching with a frozen pre-trained backbone (methods.md §4.2).

Real side, once: the class centres μ_c of the backbone features of all real images (cached per
data and backbone) and the flows F_c = ν_c − μ_c from each centre to the mean ν_c of the other
centres. Each step: render the synthetic images (pyramid + colour decorrelation + sigmoid),
augment them ``augs`` times (default once), embed, average the views, take the class means m_c
and their flows F̃_c, and minimise 1 − cos(vec F, vec F̃) with Adam on the pyramid.

``flow_denominator``: ``images`` (default) divides the synthetic non-target sum by N − 1,
N = C·IPC the number of synthetic images, as the official ``get_flow`` does (einsteinxia/SFM
``distillation/linear_gm.py``: ``(total_sum - target_class) / (N - 1)``); ``classes`` divides
by C − 1, like the real side (the proposal of methods.md, not measured); the two agree at
IPC 1.
"""

from __future__ import annotations

import torch

from ddcli.configs import SFMConfig
from ddcli.losses import flow_loss
from ddcli.methods import register_method
from ddcli.methods.backbone_base import BackboneMethod, class_means


@register_method
class SFM(BackboneMethod):
    name = "sfm"
    Config = SFMConfig

    def loss(self, view_feats: torch.Tensor) -> torch.Tensor:
        z = view_feats.mean(0)  # average over the augmented views
        m = class_means(z, self.syn_labels, self.num_classes)
        den = None if self.config.flow_denominator == "classes" else float(z.shape[0] - 1)
        return flow_loss(self.real_means, m, den)
