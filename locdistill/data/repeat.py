"""``data.repeat``: a training set seen several times per epoch (mmdetection's RepeatDataset)."""
from __future__ import annotations

from typing import Any

import torch


class RepeatDataset(torch.utils.data.Dataset):
    """``dataset`` repeated ``times`` times: ``len = times · len(dataset)``, item ``i`` is
    ``dataset[i % len(dataset)]``. Other attributes (``classes``, ``cat_ids``,
    ``json_path``...) are those of the wrapped dataset.

    The LD paper trains on VOC for 4 epochs over a 3× repeated VOC07+12 trainval set,
    which makes each epoch long enough for the step schedule and the per-epoch
    evaluation to mean what they mean on COCO.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, times: int):
        if int(times) < 1:
            raise ValueError(f"repeat times must be >= 1, got {times}")
        self.dataset, self.times = dataset, int(times)

    def __len__(self) -> int:
        return self.times * len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "times") or name.startswith("__"):  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return f"RepeatDataset({self.dataset!r}, times={self.times})"
