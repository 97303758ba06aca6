"""A lesion inside its organ: which label map each overlap rule gives (issue 11, the merge rule).

    python benchmarks/nesting.py [--cases 10 21] [--write]

Real slices of the embedded CHAOS patients (their organ's largest slice), a bright (cyst-like) or dark disc
implanted inside the liver or a kidney (:func:`~segmote_monai.data.lesions.implant_lesion`), the shipped
checkpoint prompted with the organ's tight box (which contains the lesion) and the lesion's tight box, as class
5. Dice of the lesion and of the organ around it (its mask minus the lesion) on the merged label map under each
``label_overlap`` rule, and of each structure's own mask before merging. Prints a Markdown section (machine,
commit, command); ``--write`` puts it in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import REPO, provenance, write_section
from monai.transforms import Compose

from segmote_monai.data.lesions import implant_lesion
from segmote_monai.inferers import OVERLAP_RULES, SliceSegmenter
from segmote_monai.networks import build_from_checkpoint
from segmote_monai.transforms import LoadPaird, ScaleIntensityByModalityd

BUNDLE = REPO / "bundle"
ORGANS = {1: "liver", 2: "right kidney", 3: "left kidney"}
LESION = 5
INTENSITIES = {"bright": 0.95, "dark": 0.05}


def tight_box(mask: torch.Tensor) -> list[int]:
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())]


def dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    return 2 * (pred & target).sum().item() / max(pred.sum().item() + target.sum().item(), 1)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["10", "21"])
    parser.add_argument("--write", action="store_true", help="put the section in BENCHMARKS.md")
    args = parser.parse_args(argv)
    model = build_from_checkpoint(trainable_checkpoint=BUNDLE / "models" / "model.pt", backbone="lite_medsam").eval()
    load = Compose([LoadPaird(label_values=[0, 1, 2, 3, 4]), ScaleIntensityByModalityd(keys="image", modality="MR")])
    segmenters = {rule: SliceSegmenter(model, backbone="lite_medsam", overlap=rule) for rule in OVERLAP_RULES}
    header = ["patient", "organ", "lesion", "lesion px"] + [f"{what} ({rule})" for rule in OVERLAP_RULES
                                                             for what in ("lesion", "organ around it")]
    rows = ["| " + " | ".join([*header, "lesion (own mask)", "organ (own mask)"]) + " |",
            "|---|---|---|" + "---:|" * (len(header) - 3) + "---:|---:|"]
    gaps = []
    for case in args.cases:
        name = f"chaos_t2_case{case}.nii.gz"
        data = load({"image": str(BUNDLE / "data/chaos_t2/images" / name),
                     "label": str(BUNDLE / "data/chaos_t2/labels" / name)})
        for organ, organ_name in ORGANS.items():
            z = int((data["label"][0] == organ).sum(dim=(0, 1)).argmax())
            organ_mask = data["label"][0, :, :, z] == organ
            for look, intensity in INTENSITIES.items():
                image, lesion = implant_lesion(data["image"][..., z], organ_mask, intensity=intensity)
                prompts = [(torch.tensor([tight_box(organ_mask), tight_box(lesion)], dtype=torch.float32),
                            torch.tensor([organ, LESION]))]
                cells = [case, organ_name, look, str(int(lesion.sum()))]
                for rule, segmenter in segmenters.items():
                    merged, own = segmenter(image[..., None], prompts, class_masks=True)
                    merged, own_lesion, own_organ = merged[0, ..., 0], own[LESION][0, ..., 0], own[organ][0, ..., 0]
                    cells += [f"{dice(merged == LESION, lesion):.3f}",
                              f"{dice(merged == organ, organ_mask & ~lesion):.3f}"]
                    if rule == "smaller":
                        gaps.append(dice(own_lesion, lesion) - dice(merged == LESION, lesion))
                cells += [f"{dice(own_lesion, lesion):.3f}", f"{dice(own_organ, organ_mask):.3f}"]
                rows.append("| " + " | ".join(cells) + " |")
                print(rows[-1], flush=True)
    section = ("## A lesion inside its organ: the label map's overlap rule (issue 11)\n\n" + provenance()
               + "\n\nShipped CHAOS checkpoint, one real slice per organ (its largest), a disc implanted at the "
               "organ's deepest point (radius 0.6 x that depth; bright 0.95 or dark 0.05 on [0, 1], noise 0.03); "
               "prompts: the organ's tight box (containing the lesion) and the lesion's, as class 5. Organ-around-it "
               "Dice is against the organ's label minus the lesion. Largest loss of the lesion's Dice from its own "
               f"mask to the label map under `smaller` (the bundle's default): {max(gaps):.3f}.\n\n"
               + "\n".join(rows) + "\n")
    print(section)
    if args.write:
        write_section(REPO / "BENCHMARKS.md", "nesting", section)
    return section


if __name__ == "__main__":
    sys.exit(main() and 0)
