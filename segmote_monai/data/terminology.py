"""SNOMED CT codes for a label's name, as DICOM-SEG's segment descriptions carry them.

A viewer (OHIF, 3D Slicer, a PACS) colours and names a segment by its coded category and type, not by its free
text label. The codes come from pydicom's copy of the DICOM code dictionaries (``codes.SCT``), looked up by the
label name written as a keyword ("left ventricle" -> ``LeftVentricle``), through a few aliases for the names our
datalists use, and with laterality as DICOM's type modifier ("right kidney", "kidney_right": Kidney + Right), as
3D Slicer's terminology writes it. A name none of these resolve keeps its text label with the generic type
"Anatomical Structure" and is reported as uncoded (see :func:`coded_property`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from monai.utils import optional_import

if TYPE_CHECKING:
    from pydicom.sr.coding import Code

codes, _ = optional_import("pydicom.sr.codedict", name="codes")

__all__ = ["CodedProperty", "coded_property"]

# Datalist names whose DICOM keyword differs, and findings (not anatomy) with their category.
_ALIASES = {
    "myocardium": "LeftVentricleMyocardium",
    "lv": "LeftVentricle",
    "rv": "RightVentricle",
    "tumour": "Tumor",
    "tumor": "Tumor",
    "polyp": "Lesion",
    "skin lesion": "SkinLesion",
    "lesion": "Lesion",
}
_FINDINGS = {"Tumor", "Lesion", "SkinLesion", "Mass", "Cyst"}
_LATERALITY = {"left": "Left", "right": "Right"}


@dataclass(frozen=True)
class CodedProperty:
    """A segment's coded meaning: DICOM's Segmented Property Category, Type and optional Type Modifier.

    ``coded`` is False where the name matched no code and the generic type stands in for it.
    """

    category: Code
    type: Code
    modifier: Code | None
    coded: bool


def _keyword(words: list[str]) -> str:
    return "".join(w[:1].upper() + w[1:] for w in words)


def _lookup(keyword: str) -> Code | None:
    try:
        return getattr(codes.SCT, keyword)
    except AttributeError:
        return None


def coded_property(name: str) -> CodedProperty:
    """The SNOMED CT category, type and laterality of a label named ``name`` (case, ``_`` and ``-`` ignored).

    Example: ``coded_property("right kidney")`` -> Anatomical Structure / Kidney (64033007) / Right (24028007).
    """
    words = [w for w in re.split(r"[\s_\-]+", name.strip().lower()) if w]
    text = " ".join(words)
    if text in _LATERALITY:  # pydicom's dictionary codes "Left" itself, as a qualifier, not a structure
        words = []
    candidates = [(_ALIASES.get(text), None), (_keyword(words) if words else None, None)]
    side = [w for w in words if w in _LATERALITY]
    if len(side) == 1 and len(words) > 1:
        rest = [w for w in words if w not in _LATERALITY]
        candidates += [(_ALIASES.get(" ".join(rest)), side[0]), (_keyword(rest), side[0])]
    for keyword, laterality in candidates:
        code = _lookup(keyword) if keyword else None
        if code is None:
            continue
        category = codes.SCT.MorphologicallyAbnormalStructure if keyword in _FINDINGS else codes.SCT.AnatomicalStructure
        modifier = getattr(codes.SCT, _LATERALITY[laterality]) if laterality else None
        return CodedProperty(category=category, type=code, modifier=modifier, coded=True)
    return CodedProperty(category=codes.SCT.AnatomicalStructure, type=codes.SCT.AnatomicalStructure, modifier=None,
                         coded=False)
