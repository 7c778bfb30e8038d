"""Hungarian matching of queries to objects, per image: class + mask BCE + dice + one term per attribute."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from masklab.errors import TrainingError
from masklab.models.mask2former.attribute_spec import AttributeSpec
from masklab.models.mask2former.outputs import Mask2FormerLayerOutput
from masklab.models.mask2former.point_sampling import point_sample, point_sample_channels
from masklab.models.mask2former.targets import Mask2FormerTargets


def pairwise_sigmoid_bce(
    logits: torch.Tensor, targets: torch.Tensor, softplus_sum: torch.Tensor | None = None
) -> torch.Tensor:
    """(Q, P) logits vs (G, P) targets -> (Q, G) mean BCE, without a (Q, G, P) tensor.

    BCE(x, t) = softplus(x) - x * t, so the pairwise mean is one softplus and one matmul.
    ``softplus_sum`` is ``softplus(logits).sum(-1, keepdim=True)`` when the caller has it already.
    """
    num_points = logits.shape[1]
    if softplus_sum is None:
        softplus_sum = F.softplus(logits).sum(-1, keepdim=True)
    return (softplus_sum - logits @ targets.T) / num_points


def pairwise_dice(
    logits: torch.Tensor, targets: torch.Tensor, probs: torch.Tensor | None = None
) -> torch.Tensor:
    """(Q, P) logits vs (G, P) targets -> (Q, G) dice cost ``1 - (2|p t| + 1) / (|p| + |t| + 1)``.

    ``probs`` is ``logits.sigmoid()`` when the caller has it already.
    """
    if probs is None:
        probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class Mask2FormerMatcher:
    """Assign each object one query per image by minimum total cost (scipy ``linear_sum_assignment``).

    Cost = class_weight * (-p(class)) + mask_weight * BCE + dice_weight * dice
    + sum over attributes of ``cost_weight * (-p(value))``; an unlabelled attribute (-1) adds nothing.
    Mask terms are read at ``num_points`` uniform random points shared by all queries and objects of an
    image. Costs are computed in fp32 with autocast off (fp16 overflow is a known source of NaN costs).

    Args:
        class_weight: weight of the class cost.
        mask_weight: weight of the sigmoid-BCE mask cost.
        dice_weight: weight of the dice cost.
        attributes: attribute specs (their ``cost_weight``).
        num_points: shared points per image.
    """

    def __init__(
        self,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        attributes: Sequence[AttributeSpec] = (),
        num_points: int = 12544,
    ) -> None:
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.attributes = tuple(attributes)
        self.num_points = num_points

    def cost_terms(
        self, output: Mask2FormerLayerOutput, index: int, target: Mask2FormerTargets
    ) -> dict[str, torch.Tensor]:
        """The weighted (Q, G) cost terms of image ``index``, by name (``class``, ``mask``, ``dice``, ``attr_<name>``)."""
        return self.batch_cost_terms(output, [index], [target])[0]

    def batch_cost_terms(
        self,
        output: Mask2FormerLayerOutput,
        indices: Sequence[int],
        targets: Sequence[Mask2FormerTargets],
    ) -> list[dict[str, torch.Tensor]]:
        """:meth:`cost_terms` of several images, with the per-query work done once for all of them.

        Softmaxes, the point sampling of the (Q, H, W) mask logits and the element-wise softplus / sigmoid
        over (Q, P) points run batched; only the (Q, P) x (P, G) products are per image, since G varies.
        Each image draws its own ``num_points`` uniform points, in image order (the same random stream
        as one draw per image).
        """
        indices = list(indices)
        device = output.class_logits.device
        if indices == list(range(output.class_logits.shape[0])):  # every image: no gather copies

            def pick(t: torch.Tensor) -> torch.Tensor:
                return t.float()
        else:
            sel = torch.as_tensor(indices, dtype=torch.long, device=device)

            def pick(t: torch.Tensor) -> torch.Tensor:
                return t[sel].float()

        probs = pick(output.class_logits).softmax(-1)
        coords = torch.empty(len(indices), self.num_points, 2, device=device)
        for row in coords:
            row.uniform_()
        pred = point_sample_channels(pick(output.mask_logits), coords)  # (N, Q, P)
        softplus_sum = F.softplus(pred).sum(-1, keepdim=True)
        pred_probs = pred.sigmoid()
        attr_probs = {s.name: pick(output.attribute_logits[s.name]).softmax(-1) for s in self.attributes}
        result = []
        for i, target in enumerate(targets):
            terms = {"class": -self.class_weight * probs[i][:, target.labels]}
            masks = target.masks.float().unsqueeze(0).to(pred.device)
            tgt = point_sample(masks, coords[i : i + 1])[0]  # (G, P)
            terms["mask"] = self.mask_weight * pairwise_sigmoid_bce(pred[i], tgt, softplus_sum[i])
            terms["dice"] = self.dice_weight * pairwise_dice(pred[i], tgt, pred_probs[i])
            for spec in self.attributes:
                values = target.attributes[spec.name]
                p = attr_probs[spec.name][i]
                labelled = (values >= 0).to(p.dtype)
                terms[f"attr_{spec.name}"] = -spec.cost_weight * p[:, values.clamp(min=0)] * labelled[None, :]
            result.append(terms)
        return result

    @torch.no_grad()
    def __call__(
        self, output: Mask2FormerLayerOutput, targets: Sequence[Mask2FormerTargets], layer: int = -1
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match one prediction point against the targets of every image.

        Args:
            output: one layer's predictions.
            targets: one entry per image.
            layer: index of the prediction point (for error messages only).

        Returns:
            per image ``(query_index, target_index)`` int64 tensors of length min(Q, G).

        Raises:
            TrainingError: if a cost is NaN or infinite (usually a diverging run: LR too high, fp16 overflow).
        """
        device_type = output.class_logits.device.type
        empty = torch.zeros(0, dtype=torch.int64)
        result = [(empty, empty.clone()) for _ in targets]
        present = [b for b, target in enumerate(targets) if len(target) > 0]
        if not present:
            return result
        with torch.autocast(device_type=device_type, enabled=False):
            all_terms = self.batch_cost_terms(output, present, [targets[b] for b in present])
            costs = [sum(terms.values()) for terms in all_terms]
            # One (N, Q, G_max) host copy per call instead of a copy (and a finiteness check) per
            # image: each is a stream synchronisation on CUDA.
            widest = max(int(c.shape[1]) for c in costs)
            host = torch.stack([F.pad(c, (0, widest - int(c.shape[1]))) for c in costs]).cpu().numpy()
            for b, cost, terms in zip(present, host, all_terms):
                cost = cost[:, : len(targets[b])]
                if not np.isfinite(cost).all():
                    bad = ", ".join(
                        f"{k}={'non-finite' if not torch.isfinite(v).all() else 'ok'}"
                        for k, v in terms.items()
                    )
                    raise TrainingError(
                        f"matching step (decoder output {layer}, image {b}): non-finite cost ({bad}); "
                        "the run is diverging (check the learning rate, grad clipping, fp16)"
                    )
                rows, cols = linear_sum_assignment(cost)
                result[b] = (
                    torch.as_tensor(rows, dtype=torch.int64),
                    torch.as_tensor(np.asarray(cols), dtype=torch.int64),
                )
        return result
