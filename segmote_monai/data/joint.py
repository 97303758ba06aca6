"""Several datalists trained as one model: global class ids and a per-dataset sampling rule.

Each dataset keeps its own modality, task, label encoding and label values. Class ids are made global by
an offset per dataset (dataset k's value v becomes ``offset_k + v``; the first dataset's offset is 0, so one
datalist keeps its own ids), which is what the label maps, PPT's class carriers and the validation metrics
use.

**Sampling rule** (``rule``): the share of an epoch's samples that each dataset gets.

- ``uniform``: every dataset the same share, however many cases it has (small sets are not drowned).
- ``proportional``: shares proportional to the number of training cases (a volume or a 2D image is a case).
- ``temperature``: shares proportional to ``cases ** (1 / temperature)``; 1 is proportional, large
  temperatures approach uniform.

``weights`` (optional, one positive number per dataset in datalist order) multiply the rule's shares, which are
then normalised again: ``[1, 3, 1]`` under ``uniform`` gives the second dataset 3/5 of the epoch. They are for a
dataset that needs more practice than its share gives it (a structure the frozen model cannot find at all, such as
a ring around a cavity), without re-ordering the datalists or duplicating cases.

Within a dataset every case gets the same number of samples (the remainder goes to a seeded choice of
cases), so one datalist with ``samples_per_epoch = cases x n`` draws exactly n samples from every case,
as the single-datalist trainer always has.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segmote_monai.data.datalist import Datalist, load_datalist
from segmote_monai.errors import RequestError

__all__ = ["SAMPLING_RULES", "JointDatalist", "class_offset", "dataset_weights", "metric_name", "samples_per_item"]

SAMPLING_RULES = ("uniform", "proportional", "temperature")


def metric_name(text: str) -> str:
    """A name usable in metric keys: lower case, runs of other characters as one underscore."""
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_") or "dataset"


def dataset_weights(sizes: Sequence[int], rule: str = "uniform", temperature: float = 2.0,
                    weights: Sequence[float] | None = None) -> np.ndarray:
    """Sampling shares of datasets with ``sizes`` training cases under ``rule``, times ``weights`` where given
    (they sum to 1)."""
    if rule not in SAMPLING_RULES:
        raise ValueError(f"rule must be one of {list(SAMPLING_RULES)}, got {rule!r}")
    if rule == "temperature" and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.size == 0 or (sizes <= 0).any():
        raise ValueError(f"every dataset needs at least one training case, got sizes {sizes.astype(int).tolist()}")
    if rule == "uniform":
        shares = np.ones_like(sizes)
    elif rule == "proportional":
        shares = sizes
    else:
        shares = sizes ** (1.0 / temperature)
    if weights is not None:
        factors = np.asarray(weights, dtype=np.float64).reshape(-1)
        if factors.size != sizes.size:
            raise RequestError(f"dataset_weights needs one weight per dataset ({sizes.size}), got {factors.size}: "
                               f"{factors.tolist()}")
        if not (np.isfinite(factors) & (factors > 0)).all():
            raise RequestError(f"dataset_weights must all be finite and > 0, got {factors.tolist()}")
        shares = shares * factors
    return shares / shares.sum()


def _split(total: int, shares: np.ndarray, rng: np.random.RandomState) -> list[int]:
    """``total`` into integers proportional to ``shares``: floors, then the remainder one each to a seeded
    choice among the largest fractional parts."""
    exact = total * shares
    counts = np.floor(exact).astype(int)
    left = total - int(counts.sum())
    if left:
        order = np.lexsort((rng.permutation(len(shares)), -(exact - counts)))
        counts[order[:left]] += 1
    return counts.tolist()


def samples_per_item(datasets: Sequence[int], samples_per_epoch: int, *, rule: str = "uniform",
                     temperature: float = 2.0, weights: Sequence[float] | None = None, seed: int = 0) -> list[int]:
    """Samples per epoch for each item, given each item's dataset index (``datasets``), under the sampling
    ``rule`` and ``weights`` (one per dataset index, see :func:`dataset_weights`): the datasets' shares first,
    then an even split within each dataset, in the items' order."""
    if samples_per_epoch < 1:
        raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
    groups = sorted(set(datasets))
    members = {g: [i for i, d in enumerate(datasets) if d == g] for g in groups}
    rng = np.random.RandomState(seed)
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        count = groups[-1] + 1 if groups else 0
        if count != weights.size:
            raise RequestError(f"dataset_weights needs one weight per dataset ({count}), got {weights.size}: "
                               f"{weights.tolist()}")
        weights = weights[groups]
    shares = dataset_weights([len(members[g]) for g in groups], rule, temperature, weights)
    per_dataset = _split(samples_per_epoch, shares, rng)
    counts = [0] * len(datasets)
    for g, total in zip(groups, per_dataset):
        for i, c in zip(members[g], _split(total, np.full(len(members[g]), 1.0 / len(members[g])), rng)):
            counts[i] = c
    return counts


@dataclass
class JointDatalist:
    """Datalists trained together; see the module docstring for class ids and sampling."""

    datalists: list[Datalist]

    def __post_init__(self) -> None:
        if not self.datalists:
            raise ValueError("a joint datalist needs at least one datalist")
        self.offsets = list(np.cumsum([0] + [max(d.classes) for d in self.datalists[:-1]]).tolist())
        names = [d.name for d in self.datalists]
        if len(set(names)) != len(names):
            raise ValueError(f"datalist names must differ (they name the metrics), got {names}")

    @classmethod
    def load(cls, paths: str | os.PathLike | Sequence[str | os.PathLike]) -> JointDatalist:
        """Reads one datalist path or a list of them (each validated by :func:`load_datalist`)."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        return cls([load_datalist(p) for p in paths])

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.datalists]

    @property
    def has_binary(self) -> bool:
        """Whether any dataset is a binary task (PPT is built for those)."""
        return any(d.task == "binary" for d in self.datalists)

    def global_classes(self, index: int) -> list[int]:
        """Dataset ``index``'s foreground classes as global ids."""
        return [self.offsets[index] + c for c in self.datalists[index].classes]

    @property
    def classes(self) -> list[int]:
        """Every global foreground class id."""
        return [c for i in range(len(self.datalists)) for c in self.global_classes(i)]

    @property
    def labels(self) -> dict[int, str]:
        """Global class id -> name; with several datasets the name starts with the dataset's."""
        out = {0: "background"}
        for i, d in enumerate(self.datalists):
            for c in d.classes:
                out[self.offsets[i] + c] = d.labels[c] if len(self.datalists) == 1 else f"{d.name} {d.labels[c]}"
        return out

    @property
    def groups(self) -> dict[str, list[int]]:
        """Dataset name (as a metric name) -> its global class ids."""
        return {metric_name(d.name): self.global_classes(i) for i, d in enumerate(self.datalists)}

    def items(self, section: str) -> list[dict[str, Any]]:
        """Every dataset's items of ``section``, each with ``dataset`` (its index), ``dataset_name``,
        ``class_offset``, ``task`` and ``label_encoding`` (what :class:`~segmote_monai.transforms.LoadPaird`
        reads per item)."""
        out = []
        for i, d in enumerate(self.datalists):
            extra = {"dataset": i, "dataset_name": metric_name(d.name), "class_offset": self.offsets[i],
                     "task": d.task, "label_encoding": d.label_encoding()}
            out += [{**item, **extra} for item in d.items(section)]
        return out

    def samples_per_case(self, samples_per_epoch: int, *, rule: str = "uniform", temperature: float = 2.0,
                         weights: Sequence[float] | None = None, seed: int = 0,
                         section: str = "training") -> list[int]:
        """Samples per epoch for each item of :meth:`items` (``section``), under the sampling ``rule`` and
        ``weights`` (one per datalist)."""
        return samples_per_item([item["dataset"] for item in self.items(section)], samples_per_epoch, rule=rule,
                                temperature=temperature, weights=weights, seed=seed)

    def item_defaults(self) -> dict[str, Any]:
        """What an item from elsewhere (MONAI Label's datastore: image and label only) is taken to be: the first
        dataset's, so that its label values and modality apply."""
        d = self.datalists[0]
        return {"dataset": 0, "dataset_name": metric_name(d.name), "class_offset": 0, "task": d.task,
                "label_encoding": d.label_encoding(), "modality": d.modality}

    def model_metadata(self) -> dict[str, Any]:
        """What a checkpoint carries for inference: the label names and task, and each dataset's part."""
        if len(self.datalists) == 1:
            return self.datalists[0].model_metadata()
        return {
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
            "task": "multi-class",
            "modality": None,
            "datasets": [{"name": d.name, "modality": d.modality, "task": d.task,
                          "labels": {str(self.offsets[i] + c): d.labels[c] for c in d.classes}}
                         for i, d in enumerate(self.datalists)],
        }


def class_offset(metadata: Mapping[str, Any], datalist: Datalist) -> int | None:
    """Where ``datalist``'s label values sit among a model's class ids, read from its checkpoint's metadata
    (:meth:`JointDatalist.model_metadata`): 0 for a model trained on one datalist (its ids are the label values);
    for a model trained on several, the offset of the part named like ``datalist`` with the same class names;
    None where no part matches (the model has no ids for these classes)."""
    parts = metadata.get("datasets")
    if not parts:
        return 0
    for part in parts:
        ids = {int(k): v for k, v in part.get("labels", {}).items()}
        if part.get("name") != datalist.name or not ids:
            continue
        offset = min(ids) - min(datalist.classes)
        if ids == {offset + c: datalist.labels[c] for c in datalist.classes}:
            return offset
    return None
