"""Hungarian matching of queries to objects, per image: class + mask BCE + dice + one term per attribute."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from masklab.errors import TrainingError
from masklab.models.mask2former.attribute_spec import AttributeSpec
from masklab.models.mask2former.outputs import Mask2FormerLayerOutput
from masklab.models.mask2former.point_sampling import point_sample, point_sample_channels
from masklab.models.mask2former.targets import Mask2FormerTargets


def pairwise_sigmoid_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(..., Q, P) logits vs (..., G, P) targets -> (..., Q, G) mean BCE, without a (Q, G, P) tensor.

    BCE(x, t) = softplus(x) - x * t, so the pairwise mean is one softplus sum and one matmul. The sum is
    taken as ``sum(relu(x)) + sum(log(1 + exp(-|x|)))`` with ``|x|`` capped at 80 inside the exponential:
    ``F.softplus`` ran 4-6x slower on the wide-ranged logits of an untrained model (scalar branches,
    denormal ``exp``), and the cap and ``log`` for ``log1p`` move a mean over the points by < 1e-7 per
    point (session 10; (2, 100, 12544) logits, 1 thread: 56-73 -> 13-17 ms).
    """
    decay = logits.abs().clamp_(max=80.0).neg_().exp_()  # exp(-|x|) in [1.8e-35, 1]: never denormal
    softplus_sum = logits.clamp(min=0).sum(-1, keepdim=True) + decay.add_(1.0).log_().sum(-1, keepdim=True)
    return (softplus_sum - logits @ targets.transpose(-1, -2)) / logits.shape[-1]


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(..., Q, P) logits vs (..., G, P) targets -> (..., Q, G) dice cost ``1 - (2|p t| + 1) / (|p| + |t| + 1)``."""
    # Capped at +-80 (sigmoid(-80) = 1.8e-35): below that sigmoid's results are denormal, several times
    # slower to compute, and equal to 0 for every purpose here.
    probs = logits.clamp(-80.0, 80.0).sigmoid_()
    numerator = 2 * (probs @ targets.transpose(-1, -2))  # (2 * probs) @ t would scale all Q x P first
    denominator = probs.sum(-1)[..., :, None] + targets.sum(-1)[..., None, :]
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

    #: Prediction points matched in one stack while their point logits hold at most this many values.
    stack_elements = 1 << 20

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
        terms, sizes = self.padded_cost_terms(output, [index], [target])
        return {name: term[0, :, : sizes[0]] for name, term in terms.items()}

    def draw_points(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(n, num_points, 2) uniform points, one image after the other (the matcher's only random draw)."""
        coords = torch.empty(n, self.num_points, 2, device=device)
        for row in coords:
            row.uniform_()
        return coords

    def padded_cost_terms(
        self,
        output: Mask2FormerLayerOutput,
        indices: Sequence[int],
        targets: Sequence[Mask2FormerTargets],
    ) -> tuple[dict[str, torch.Tensor], list[int]]:
        """The weighted cost terms of several images at once, as (N, Q, G_max) tensors, and each G_i.

        Columns past an image's own G_i are padding (finite, meaningless). Every step runs once for
        the whole batch: softmaxes, the point sampling of the (Q, H, W) mask logits and of all objects'
        masks (the images' targets share the padded input size), the element-wise softplus / sigmoid,
        and the (Q, P) x (P, G) products as one batched product over zero-padded targets. Each image
        draws its own ``num_points`` uniform points, in image order (the same random stream as one
        draw per image).
        """
        coords = self.draw_points(len(indices), output.class_logits.device)
        return self.stacked_cost_terms([output], indices, targets, coords)

    def stacked_cost_terms(
        self,
        outputs: Sequence[Mask2FormerLayerOutput],
        indices: Sequence[int],
        targets: Sequence[Mask2FormerTargets],
        coords: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], list[int]]:
        """:meth:`padded_cost_terms` of several prediction points in one pass: (L * N, Q, G_max) terms.

        Row ``l * N + i`` is prediction point ``outputs[l]`` against image ``indices[i]``; ``coords``
        (L * N, num_points, 2) are the points of each row (:meth:`draw_points` per prediction point, in
        order). The targets are concatenated once and every object is read at the points of all L
        prediction points by one ``grid_sample`` (the L point sets as rows of its grid), so L prediction
        points cost one set of operations instead of L.
        """
        indices = list(indices)
        num_layers, n = len(outputs), len(indices)
        device = outputs[0].class_logits.device
        if indices == list(range(outputs[0].class_logits.shape[0])):  # every image: no gather copies

            def pick(t: torch.Tensor) -> torch.Tensor:
                return t.float()
        else:
            sel = torch.as_tensor(indices, dtype=torch.long).to(device, non_blocking=True)

            def pick(t: torch.Tensor) -> torch.Tensor:
                return t[sel].float()

        def stacked(get: Callable[[Mask2FormerLayerOutput], torch.Tensor]) -> torch.Tensor:
            if num_layers == 1:
                return pick(get(outputs[0]))
            return torch.cat([pick(get(o)) for o in outputs])

        probs = stacked(lambda o: o.class_logits).softmax(-1)
        q = probs.shape[1]
        pred = point_sample_channels(stacked(lambda o: o.mask_logits), coords)  # (L * N, Q, P)
        sizes = [len(t) for t in targets]
        width = max(sizes, default=0)
        # Object k of the batch is column slot[k] of image owner[k]: one scatter pads every target.
        # Built on the host and copied without blocking (a blocking copy synchronises a CUDA stream).
        owner = torch.repeat_interleave(torch.arange(n), torch.tensor(sizes, dtype=torch.long))
        owner = owner.to(device, non_blocking=True)
        slot = torch.cat([torch.arange(g) for g in sizes] or [torch.zeros(0, dtype=torch.long)])
        slot = slot.to(device, non_blocking=True)

        def padded(values: torch.Tensor, fill: float) -> torch.Tensor:
            """(L, T, ...) per-object values -> (L * N, G_max, ...) with ``fill`` in the padding."""
            out = values.new_full((num_layers, n, width, *values.shape[2:]), fill)
            out[:, owner, slot] = values
            return out.flatten(0, 1)

        masks = torch.cat([t.masks for t in targets]).float().to(device)  # (T, H, W)
        # Each object at its image's points of every prediction point, in one sampling call.
        points = coords.view(num_layers, n, self.num_points, 2)[:, owner].transpose(0, 1)  # (T, L, P, 2)
        sampled = point_sample(masks.unsqueeze(1), points.reshape(len(owner), -1, 2))
        sampled = sampled.view(len(owner), num_layers, self.num_points)  # (T, L, P)
        tgt = padded(sampled.transpose(0, 1), 0.0)  # (L * N, G, P)

        def per_object(values: torch.Tensor, fill: int) -> torch.Tensor:
            return padded(values.to(device, torch.long).expand(num_layers, -1), fill)

        labels = per_object(torch.cat([t.labels for t in targets]), 0)
        terms = {"class": -self.class_weight * probs.gather(2, labels.unsqueeze(1).expand(-1, q, -1))}
        terms["mask"] = self.mask_weight * pairwise_sigmoid_bce(pred, tgt)
        terms["dice"] = self.dice_weight * pairwise_dice(pred, tgt)
        for spec in self.attributes:
            p = stacked(lambda o, name=spec.name: o.attribute_logits[name]).softmax(-1)
            values = per_object(torch.cat([t.attributes[spec.name] for t in targets]), -1)
            chosen = p.gather(2, values.clamp(min=0).unsqueeze(1).expand(-1, q, -1))
            terms[f"attr_{spec.name}"] = -spec.cost_weight * chosen * (values >= 0).to(p.dtype)[:, None, :]
        return terms, sizes

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
        return self.match_layers([output], targets, first_layer=layer)[0]

    @torch.no_grad()
    def match_layers(
        self,
        outputs: Sequence[Mask2FormerLayerOutput],
        targets: Sequence[Mask2FormerTargets],
        coords: Sequence[torch.Tensor] | None = None,
        first_layer: int = 0,
    ) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """:meth:`__call__` for several prediction points at once (one cost pass, one host copy).

        Args:
            outputs: the prediction points, each with the same (B, Q) queries.
            targets: one entry per image.
            coords: per prediction point, the (N, num_points, 2) points of its N images with objects,
                as :meth:`draw_points` gives them; drawn here, in order, when not given.
            first_layer: index of ``outputs[0]`` among the prediction points (for error messages).

        Returns:
            per prediction point, per image, ``(query_index, target_index)`` as :meth:`__call__`.
        """
        device = outputs[0].class_logits.device
        empty = torch.zeros(0, dtype=torch.int64)
        results = [[(empty, empty.clone()) for _ in targets] for _ in outputs]
        present = [b for b, target in enumerate(targets) if len(target) > 0]
        if not present:
            return results
        if coords is None:
            coords = [self.draw_points(len(present), device) for _ in outputs]
        n = len(present)
        q = outputs[0].class_logits.shape[1]
        # Prediction points are stacked while their (N, Q, P) point logits stay small: the stacking
        # saves per-operation overhead on small models; large ones (the paper's 100 queries x 12544
        # points: 10 MB per image pair) are matched one at a time as before, since stacking ten would
        # only add 100 MB temporaries to the same arithmetic (not measured).
        group = max(1, self.stack_elements // max(1, n * q * self.num_points))
        for first in range(0, len(outputs), group):
            chunk = slice(first, first + group)
            with torch.autocast(device_type=device.type, enabled=False):
                terms, sizes = self.stacked_cost_terms(
                    outputs[chunk], present, [targets[b] for b in present], torch.cat(list(coords[chunk]))
                )
                # One (L * N, Q, G_max) host copy per stack instead of a copy (and a finiteness check)
                # per image and prediction point: each is a stream synchronisation on CUDA.
                host = sum(terms.values()).cpu().numpy()
            for row, cost in enumerate(host):
                layer, i = divmod(row, n)
                b = present[i]
                cost = cost[:, : sizes[i]]
                if not np.isfinite(cost).all():
                    bad = ", ".join(
                        f"{k}={'non-finite' if not torch.isfinite(v[row, :, : sizes[i]]).all() else 'ok'}"
                        for k, v in terms.items()
                    )
                    raise TrainingError(
                        f"matching step (decoder output {first_layer + first + layer}, image {b}): non-finite "
                        f"cost ({bad}); the run is diverging (check the learning rate, grad clipping, fp16)"
                    )
                rows, cols = linear_sum_assignment(cost)
                results[first + layer][b] = (
                    torch.as_tensor(rows, dtype=torch.int64),
                    torch.as_tensor(np.asarray(cols), dtype=torch.int64),
                )
        return results
