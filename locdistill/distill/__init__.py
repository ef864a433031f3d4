"""Localization distillation (DESIGN §5, §10).

- :mod:`.teacher`: build the teacher, load it strictly, check it fits the student;
- :mod:`.distiller`: :class:`Distiller`, the frozen teacher and the student in one module;
- :mod:`.regions`: where the terms look (main region, VLR, teacher-score weights);
- :mod:`.terms`: LD, VLR-LD and class KD, pure functions of
  (student :class:`~locdistill.models.dense.DenseOutputs`, teacher ``DenseOutputs``,
  :class:`~locdistill.models.dense.Assignment`);
- :mod:`.hetero`: heterogeneous LD, a teacher's distributions resampled onto the student's bins,
  anchor points and levels (pure functions; not wired into training yet);
- :mod:`.crosshead`: cross-head distillation (adapter, feature standardisation, terms);
- :mod:`.imitation`: feature imitation on the FPN maps (adapter, regions, masked MSE);
- :mod:`.criterion`: :class:`DistillTerms`, all of the above as the component a detector family's
  criterion is built with (constructor injection);
- :mod:`.build`: :func:`build_criterion`, the one place a criterion (distilling or not) is built
  from a config.
"""
from .build import build_criterion
from .criterion import DistillTerms
from .crosshead import CrossHeadAdapter, crosshead_layers, crosshead_terms, match_channel_stats
from .distiller import Distiller
from .hetero import HeteroTeacher, map_teacher, match_levels, resample_bins, side_shift
from .imitation import IMITATION_MODES, ImitationAdapter, neck_channels
from .teacher import build_teacher, check_compatible

__all__ = ["IMITATION_MODES", "CrossHeadAdapter", "DistillTerms", "Distiller", "HeteroTeacher", "ImitationAdapter",
           "build_criterion", "build_teacher", "check_compatible", "crosshead_layers", "crosshead_terms",
           "map_teacher", "match_channel_stats", "match_levels", "neck_channels", "resample_bins", "side_shift"]
