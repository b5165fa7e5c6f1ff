"""Mixup and CutMix of whole training batches: torchvision's v2 ``MixUp`` / ``CutMix``.

They pair each sample with its neighbour in the (shuffled) batch and return soft targets
``[N, num_classes]``; ``F.cross_entropy`` takes those as class probabilities. The mixing weight is
drawn on the host, so mixing a batch on the GPU needs no device synchronisation.
"""

from __future__ import annotations

from torch import nn
from torchvision.transforms import v2

from imgcls.utils.errors import UserError


def batch_mixing(num_classes: int, mixup_alpha: float, cutmix_alpha: float) -> nn.Module | None:
    """MixUp, CutMix, a random choice of the two per batch (both alphas > 0), or None (both 0)."""
    for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if alpha < 0:
            raise UserError(f"model.{name} must be >= 0 (0 = off), got {alpha}")
    chosen = []
    if mixup_alpha > 0:
        chosen.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        chosen.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not chosen:
        return None
    return chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)
