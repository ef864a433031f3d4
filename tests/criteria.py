"""Criteria for the tests: a :class:`GFLCriterion` with :class:`DistillTerms` injected."""
from __future__ import annotations

import dataclasses

from locdistill.distill import DistillTerms
from locdistill.models.criterion import GFLCriterion

#: the keyword arguments that configure the distillation terms (the ``distill.*`` names)
TERM_FIELDS = frozenset(f.name for f in dataclasses.fields(DistillTerms))


def distilling_criterion(num_classes: int, **kw) -> GFLCriterion:
    """``GFLCriterion(num_classes, ..., distill_terms=DistillTerms(...))``: the keywords named like a
    :class:`DistillTerms` field configure the terms, the others the criterion."""
    terms = {k: kw.pop(k) for k in list(kw) if k in TERM_FIELDS}
    return GFLCriterion(num_classes, distill_terms=DistillTerms(**terms), **kw)
