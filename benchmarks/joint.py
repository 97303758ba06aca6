"""Joint multi-dataset training on cached frozen-encoder outputs, as the benchmarks run it.

Every labelled training slice of every dataset is pre-processed and embedded once (through the shared
:class:`EmbeddingCache`); a training step then costs only the decoder. One sample is a slice and one of its
classes: box-prompted (a box from the class's mask, each side jittered by up to ``box_jitter``), or, on
binary datasets and for a model with PPT, prompt-free half of the time. Steps draw a dataset uniformly, then
a sample of it, so that small datasets are not drowned by CHAOS's volumes. Class ids are made global
(dataset offset + label value) for PPT's text carrier.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.transforms import Compose

from segmote_monai.data.cache import EmbeddingCache
from segmote_monai.data.datalist import Datalist
from segmote_monai.data.slicing import volume_to_slices
from segmote_monai.handlers.ppt_schedule import carrier_probability
from segmote_monai.inferers.slices import SliceSegmenter
from segmote_monai.losses import DiceBalanceLoss
from segmote_monai.networks.segmote import SegMoTE
from segmote_monai.transforms import LoadPaird, ScaleIntensityByModalityd
from segmote_monai.transforms.array import ResizeLongestSidePad, box_of_mask, jitter_box


def volume_loader(datalist: Datalist) -> Callable[[dict], dict]:
    return Compose([LoadPaird(**datalist.label_encoding()), ScaleIntensityByModalityd(keys="image")])


@dataclass
class SliceBank:
    """Training slices at the network's input size: float16 embeddings, label maps, their dataset."""

    embeddings: list[torch.Tensor] = field(default_factory=list)  # [D, h, w] float16
    labels: list[torch.Tensor] = field(default_factory=list)  # [S, S] uint8
    dataset: list[int] = field(default_factory=list)
    class_offsets: list[int] = field(default_factory=list)  # global class id = offset + label value
    binary: list[bool] = field(default_factory=list)

    @classmethod
    def build(cls, model: SegMoTE, datalists: Sequence[Datalist], *, backbone: str, cache: EmbeddingCache,
              max_slices_per_case: int | None = None, max_cases: int | None = None,
              batch_size: int = 8) -> SliceBank:
        bank = cls()
        segmenter = SliceSegmenter(model, backbone=backbone, cache=cache, batch_size=batch_size)
        resize = ResizeLongestSidePad(model.img_size, mode="nearest-exact")
        offset = 0
        for index, datalist in enumerate(datalists):
            bank.class_offsets.append(offset)
            bank.binary.append(datalist.task == "binary")
            offset += max(datalist.classes)
            load = volume_loader(datalist)
            for item in datalist.items("training")[:max_cases]:
                case = load(item)
                images, labels = volume_to_slices(case["image"]), volume_to_slices(case["label"])
                keep = [i for i in range(len(labels)) if labels[i].any()]
                if max_slices_per_case is not None and len(keep) > max_slices_per_case:
                    keep = [keep[round(j)] for j in np.linspace(0, len(keep) - 1, max_slices_per_case)]
                for start in range(0, len(keep), batch_size):
                    chunk = keep[start: start + batch_size]
                    inputs = torch.stack([segmenter.preprocess(images[i]) for i in chunk])
                    embedded = segmenter.embed(inputs).cpu().half()
                    for j, i in enumerate(chunk):
                        bank.embeddings.append(embedded[j])
                        bank.labels.append(torch.as_tensor(resize(labels[i].float()))[0].round().to(torch.uint8))
                        bank.dataset.append(index)
        return bank

    @property
    def num_classes(self) -> int:
        """Global class ids run from 1 to this - 1."""
        return max(int(label.max()) + self.class_offsets[d] for label, d in zip(self.labels, self.dataset)) + 1

    def samples(self, *, prompt_free: bool) -> dict[int, list[tuple[int, int, str]]]:
        """Per dataset: (slice, label value, ``box`` or ``none``) for every class present on every slice."""
        out: dict[int, list[tuple[int, int, str]]] = {}
        for i, (label, d) in enumerate(zip(self.labels, self.dataset)):
            for value in torch.unique(label).tolist():
                if value == 0:
                    continue
                out.setdefault(d, []).append((i, value, "box"))
                if prompt_free and self.binary[d]:
                    out.setdefault(d, []).append((i, value, "none"))
        return out


@dataclass
class TrainingBudget:
    epochs: int = 15
    steps_per_epoch: int = 40
    batch_size: int = 10
    learning_rate: float = 1e-4
    milestones: tuple[float, ...] = (7 / 15, 12 / 15)  # the paper's epochs 7 and 12 of 15
    box_jitter: float = 0.1
    lambda_balance: float = 0.01
    ppt_decay_fraction: float = 0.7


def train_joint(model: SegMoTE, bank: SliceBank, budget: TrainingBudget, *, seed: int = 0,
                log: Callable[[str], None] = print) -> dict[str, float]:
    """Trains ``model``'s trainable parameters on ``bank``; returns the time taken and the last losses."""
    torch.manual_seed(seed)
    rng = np.random.RandomState(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=budget.learning_rate)
    total = budget.epochs * budget.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimiser, milestones=[round(m * total) for m in budget.milestones], gamma=0.5)
    loss_fn = DiceBalanceLoss(lambda_balance=budget.lambda_balance)
    pools = bank.samples(prompt_free=model.ppt is not None)
    datasets = sorted(pools)
    size = model.img_size
    model.train()
    start, losses = time.perf_counter(), []
    for step in range(total):
        epoch = step // budget.steps_per_epoch + 1
        if model.ppt is not None:
            model.ppt.carrier_probability = carrier_probability(epoch, budget.epochs, budget.ppt_decay_fraction)
        drawn = []
        for d in rng.choice(datasets, budget.batch_size):
            pool = pools[int(d)]
            drawn.append(pool[rng.randint(len(pool))])
        loss = torch.zeros(())
        for mode in ("box", "none"):
            part = [s for s in drawn if s[2] == mode]
            if not part:
                continue
            embeddings = torch.stack([bank.embeddings[i] for i, _, _ in part]).float()
            masks = torch.stack([(bank.labels[i] == v) for i, v, _ in part])[:, None].float()
            class_ids = torch.tensor([bank.class_offsets[bank.dataset[i]] + v for i, v, _ in part])
            if mode == "box":
                boxes = torch.stack([jitter_box(box_of_mask(m[0] > 0), budget.box_jitter, (size, size), rng)
                                     for m in masks])
                out = model.predict(image_embeddings=embeddings, boxes=boxes)
            else:
                out = model.predict(image_embeddings=embeddings, use_ppt=True, carrier_masks=masks,
                                    carrier_class_ids=class_ids)
            loss = loss + loss_fn(out, masks) * (len(part) / len(drawn))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        losses.append(loss.item())
        if (step + 1) % budget.steps_per_epoch == 0:
            log(f"  epoch {epoch}/{budget.epochs}: loss {np.mean(losses[-budget.steps_per_epoch:]):.4f} "
                f"({time.perf_counter() - start:.0f} s)")
    model.eval()
    return {"seconds": time.perf_counter() - start, "final_loss": float(np.mean(losses[-budget.steps_per_epoch:])),
            "steps": total}
