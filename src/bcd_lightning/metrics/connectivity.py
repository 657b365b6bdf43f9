"""Topology metrics with sum-reduced states (exact under DDP): Betti-0 connectivity error and clDice."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from bcd_lightning.metrics.morphology import binary_skeleton, count_components, segmentation_labels


class ConnectivityError(Metric):
    """Betti-0 error: ``|#components(pred) - #components(GT)|`` per image and class, averaged.

    Components are connected regions of one class (``connectivity`` 8 or 4), counted exactly on the inputs'
    device by union-find over horizontal runs (``morphology.count_components``; no scipy needed). An
    (image, class) pair counts only if the class occurs in the prediction or the GT of that image.
    ``ignore_index`` pixels belong to no class in pred and GT (an ignored stripe can split a component, in
    both maps alike).

    ``compute`` is the mean over all counted (image, class) pairs; ``per_class`` the mean per class (NaN for
    classes never counted). Lower is better.

    With ``cldice_class`` set, also accumulates clDice (Shit et al., CVPR 2021) of that class from the
    complete skeletons S of the binary masks (``morphology.binary_skeleton``: the paper's soft skeleton on
    0/1 input), ``Tprec = |S_P ∩ G| / |S_P|`` and ``Tsens = |S_G ∩ P| / |S_G|`` with counts summed over the
    split; read it with ``cldice()``. Skeletonisation iterates about half the class's thickness, so it is
    meant for thin classes.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        connectivity: int = 8,
        cldice_class: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
        if cldice_class is not None and not 0 <= cldice_class < num_classes:
            raise ValueError(f"cldice_class {cldice_class} outside [0, {num_classes})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.connectivity = connectivity
        self.cldice_class = cldice_class
        zeros = torch.zeros(num_classes, dtype=torch.long)
        self.add_state("error_sum", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("pairs", default=zeros.clone(), dist_reduce_fx="sum")
        if cldice_class is not None:
            for name in ("skel_pred_in_gt", "skel_pred", "skel_gt_in_pred", "skel_gt"):
                self.add_state(name, default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """``preds``: ``[B, H, W]`` class indices or ``[B, K, H, W]`` scores; ``target``: ``[B, H, W]``."""
        pred, gt = segmentation_labels(
            preds, target, self.num_classes, self.ignore_index, "ConnectivityError"
        )
        b = gt.size(0)
        counts = count_components(torch.cat([pred, gt]), self.num_classes, self.connectivity)
        n_pred, n_gt = counts[:b], counts[b:]
        occurs = (n_pred + n_gt) > 0
        self.error_sum += ((n_pred - n_gt).abs() * occurs).sum(0)
        self.pairs += occurs.sum(0)
        if self.cldice_class is not None:
            self._update_cldice(pred, gt)

    def _update_cldice(self, pred: Tensor, gt: Tensor) -> None:
        vp, vg = pred == self.cldice_class, gt == self.cldice_class
        sp, sg = binary_skeleton(vp), binary_skeleton(vg)
        self.skel_pred_in_gt += (sp & vg).sum()
        self.skel_pred += sp.sum()
        self.skel_gt_in_pred += (sg & vp).sum()
        self.skel_gt += sg.sum()

    def per_class(self) -> Tensor:
        err, n = self.error_sum.double(), self.pairs.double()
        return torch.where(n > 0, err / n.clamp_min(1), torch.full_like(err, float("nan"))).float()

    def compute(self) -> Tensor:
        n = self.pairs.sum()
        return (self.error_sum.sum().double() / n.clamp_min(1)).float()

    def cldice(self) -> Tensor:
        """clDice of ``cldice_class`` over the split: NaN if the class never occurred, 0 if only on one side."""
        if self.cldice_class is None:
            raise RuntimeError("ConnectivityError.cldice() needs cldice_class")
        if self.skel_pred == 0 and self.skel_gt == 0:
            return torch.tensor(float("nan"), device=self.skel_pred.device)
        tprec = self.skel_pred_in_gt.double() / self.skel_pred.clamp_min(1)
        tsens = self.skel_gt_in_pred.double() / self.skel_gt.clamp_min(1)
        if tprec + tsens == 0:
            return torch.zeros((), device=tprec.device)
        return (2 * tprec * tsens / (tprec + tsens)).float()
