"""Data check across splits: every split describes its labels as dataset.train does.

Training refuses a val set whose class list differs (:func:`~masklab.data.split_meta.check_same_meta`);
the doctor reports the same mismatch before the run, for every split other than train.
"""

from __future__ import annotations

from masklab.doctor.context import DoctorContext
from masklab.doctor.finding import Finding, error, ok
from masklab.doctor.registry import register_check
from masklab.errors import DataError

_FIX = "fix the dataset key, file or path named here"


@register_check("data", "split_meta")
def check_split_meta(ctx: DoctorContext) -> list[Finding]:
    """Classes (order included), category ids, attributes and ignore_index agree with dataset.train."""
    from masklab.data.split_meta import check_same_meta

    if "train" not in ctx.splits:
        return []
    out: list[Finding] = []
    for split in ctx.splits:
        if split == "train":
            continue
        name = f"data.split_meta[{split}]"
        failure = ctx.dataset_failure("train", name, _FIX) or ctx.dataset_failure(split, name, _FIX)
        if failure is not None:
            out.append(failure)
            continue
        train, other = ctx.dataset("train"), ctx.dataset(split)
        try:
            check_same_meta(train, other, ctx.rc.source, keys=("dataset.train", f"dataset.{split}"))
        except DataError as exc:
            out.append(
                error(
                    name,
                    str(exc),
                    f"give dataset.{split} the classes of dataset.train in the same order "
                    "(training refuses this config)",
                )
            )
            continue
        meta = getattr(train, "metainfo", None)
        count = f" ({meta.num_classes} classes)" if meta is not None else ""
        out.append(ok(name, f"dataset.{split} labels its classes as dataset.train does{count}"))
    return out
