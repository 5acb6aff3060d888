"""The training losses of Section 3.2: Dice (weight 1) + binary cross-entropy (weight 1) on logits, and two
options: the total-variation loss of the RSN-U-net paper (lambda 0.4) and a soft-skeleton (clDice) term standing in
for the released code's skeleton term (0.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def total_variation(prob: torch.Tensor) -> torch.Tensor:
    """Total-variation loss of a probability map (RSN-U-net, Eq. 3).

    Mean squared difference between vertical neighbours plus that between
    horizontal neighbours; ``prob`` is (N, 1, H, W) in [0, 1].
    """
    dv = (prob[..., 1:, :] - prob[..., :-1, :]).pow(2).mean()
    dh = (prob[..., :, 1:] - prob[..., :, :-1]).pow(2).mean()
    return dv + dh


def _soft_erode(x):
    return torch.minimum(-F.max_pool2d(-x, (3, 1), 1, (1, 0)), -F.max_pool2d(-x, (1, 3), 1, (0, 1)))


def _soft_dilate(x):
    return F.max_pool2d(x, 3, 1, 1)


def soft_skeleton(x: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Differentiable skeleton of a (N, 1, H, W) map in [0, 1] (Shit et al., clDice, 2021)."""
    skel = F.relu(x - _soft_dilate(_soft_erode(x)))
    for _ in range(iterations):
        x = _soft_erode(x)
        delta = F.relu(x - _soft_dilate(_soft_erode(x)))
        skel = skel + F.relu(delta - skel * delta)
    return skel


def skeleton_loss(prob: torch.Tensor, target: torch.Tensor, iterations: int = 3, eps: float = 1.0) -> torch.Tensor:
    """1 - clDice: the prediction's skeleton inside the label and the label's skeleton inside the prediction."""
    sp, st = soft_skeleton(prob, iterations), soft_skeleton(target, iterations)
    tprec = ((sp * target).sum() + eps) / (sp.sum() + eps)
    tsens = ((st * prob).sum() + eps) / (st.sum() + eps)
    return 1.0 - 2.0 * tprec * tsens / (tprec + tsens)


class SegmentationLoss(torch.nn.Module):
    """Weighted Dice + BCE (+ total variation, + skeleton) on logits; returns every term.

    Parameters
    ----------
    dice_weight, bce_weight : the paper's 1 and 1.
    tv_weight : RSN-U-net total-variation weight (paper of that method: 0.4; 0 = off).
    skeleton_weight : soft-skeleton (clDice) weight (released code: 0.1; 0 = off).
    """

    def __init__(self, dice_weight=1.0, bce_weight=1.0, tv_weight=0.0, skeleton_weight=0.0):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.w = {"dice": dice_weight, "bce": bce_weight, "tv": tv_weight, "skeleton": skeleton_weight}
        self.dice = smp.losses.DiceLoss(mode="binary", from_logits=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = logits.float()
        terms = {"dice": self.dice(logits, target), "bce": F.binary_cross_entropy_with_logits(logits, target)}
        prob = torch.sigmoid(logits) if (self.w["tv"] or self.w["skeleton"]) else None
        if self.w["tv"]:
            terms["tv"] = total_variation(prob)
        if self.w["skeleton"]:
            terms["skeleton"] = skeleton_loss(prob, target)
        terms["loss"] = sum(self.w[k] * v for k, v in terms.items())
        return terms
