from __future__ import annotations

import json
import re

import pytest
import torch
from monai.data import MetaTensor

from segmote_monai.errors import InputFileError, RequestError
from segmote_monai.transforms import PROMPTS_META_KEY, AttachPromptsd
from segmote_monai.transforms.prompts import (
    PROPAGATION_META_KEY,
    PropagationSeed,
    boxes_to_slice_prompts,
    read_boxes,
)

LABELS = {"0": "background", "1": "liver", "2": "spleen"}


def _image(slices: int = 4) -> MetaTensor:
    """An oriented [1, H, W, S] volume with an identity affine (voxel = oriented index)."""
    image = MetaTensor(torch.rand(1, 20, 30, slices))
    image.meta["read_affine"] = torch.eye(4, dtype=torch.float64)
    return image


def _roi() -> MetaTensor:
    roi = torch.zeros(1, 20, 30, 4, dtype=torch.uint8)
    roi[0, 2:6, 3:9, 1] = 1
    roi[0, 10:15, 12:20, 1:3] = 2
    return MetaTensor(roi)


BOX = {"boxes": [{"label": "spleen", "box": [2, 3, 1, 8, 9, 2]}]}


@pytest.mark.parametrize("boxes", [BOX, BOX["boxes"], json.dumps(BOX)], ids=["dict", "list", "json-text"])
def test_boxes_in_any_form_give_the_same_prompts(boxes):
    out = AttachPromptsd(labels=LABELS, boxes=boxes)({"image": _image()})
    prompts = out["image"].meta[PROMPTS_META_KEY]
    assert [len(c) for _, c in prompts] == [0, 1, 1, 0]
    boxes_1, classes_1 = prompts[1]
    assert classes_1.tolist() == [2]  # the name "spleen" -> its value
    assert boxes_1.tolist() == [[3.0, 2.0, 9.0, 8.0]]  # x along the columns (j), y along the rows (i)


def test_a_boxes_file_and_the_roi(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(BOX))
    from_file = AttachPromptsd(labels=LABELS, boxes=str(path))({"image": _image()})
    assert [len(c) for _, c in from_file["image"].meta[PROMPTS_META_KEY]] == [0, 1, 1, 0]
    out = AttachPromptsd(labels=LABELS)({"image": _image(), "label": _roi()})
    assert "label" not in out  # an input, not a prediction
    assert [c.tolist() for _, c in out["image"].meta[PROMPTS_META_KEY]] == [[], [1, 2], [2], []]


def test_auto_mode_on_a_binary_model_is_prompt_free():
    out = AttachPromptsd(labels={"1": "lesion"}, prompt_mode="auto")({"image": _image()})
    assert out["image"].meta[PROMPTS_META_KEY] is None


@pytest.mark.parametrize(
    "kwargs,data,error,message",
    [
        ({"prompt_mode": "clicks"}, {}, RequestError, "prompt_mode must be one of ['auto', 'box'], got 'clicks'"),
        ({"prompt_mode": "auto"}, {}, RequestError, "needs a binary model or one trained with class_prompts; this one segments 2 classes"),
        ({}, {}, RequestError, "needs exactly one of boxes"),
        ({"boxes": BOX}, {"label": "roi"}, RequestError, "got both"),
        ({"boxes": {"boxes": [{"label": "heart", "box": [0, 0, 0, 1, 1, 1]}]}}, {}, InputFileError,
         "'heart' is neither a value nor a known name (liver, spleen)"),
        ({"boxes": {"boxes": [{"label": 7, "box": [0, 0, 0, 1, 1, 1]}]}}, {}, InputFileError,
         "label values [7] are not among the model's [1, 2]"),
        ({"boxes": {"boxes": [{"label": 1, "box": [0, 0, 0, float("nan"), 1, 1]}]}}, {}, InputFileError,
         "not a finite number"),
        ({"boxes": {"boxes": [{"label": 1, "box": [50, 50, 0, 60, 60, 1]}]}}, {}, InputFileError,
         "box 0 lies outside the image (30 x 20 pixels, 4 slices)"),
        ({"boxes": "{not json"}, {}, InputFileError, "boxes: not valid JSON"),
    ],
    ids=["unknown-mode", "auto-multi-class", "no-prompt", "both", "unknown-name", "unknown-value", "nan",
         "outside", "malformed"],
)
def test_refusals_name_the_problem(kwargs, data, error, message):
    transform = AttachPromptsd(labels=LABELS, **kwargs)  # request values are checked per call, not when built
    with pytest.raises(error) as raised:
        transform({"image": _image(), **data})
    assert message in str(raised.value)


def test_a_model_dependent_refusal_names_the_checkpoint():
    transform = AttachPromptsd(labels=LABELS, prompt_mode="auto", checkpoint="/models/model.pt")
    with pytest.raises(RequestError, match=r"^/models/model.pt: prompt_mode 'auto'"):
        transform({"image": _image()})


def test_an_roi_without_the_models_labels_is_refused():
    with pytest.raises(InputFileError, match=r"the ROI holds none of the model's labels \[1, 2\]"):
        AttachPromptsd(labels=LABELS)({"image": _image(), "label": MetaTensor(torch.zeros(1, 20, 30, 4))})


def test_labels_need_a_foreground_class():
    with pytest.raises(ValueError, match="at least one foreground class"):
        AttachPromptsd(labels={"0": "background"})


def test_read_boxes_names_a_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="boxes file not found"):
        read_boxes(str(tmp_path / "nope.json"))


def test_propagated_boxes_become_seeds_and_the_rest_stay_per_slice():
    spec = {"boxes": [
        {"label": "liver", "box": [2, 3, 2, 8, 9, 2], "propagate": True},  # one slice: a key slice, whole volume
        {"label": "spleen", "box": [10, 12, 1, 14, 19, 5], "propagate": True},  # a 3D box: its middle, its range
        {"label": 1, "box": [2, 3, 0, 8, 9, 0]},
    ]}
    out = AttachPromptsd(labels=LABELS, boxes=spec)({"image": _image(slices=6)})
    seeds = out["image"].meta[PROPAGATION_META_KEY]
    assert seeds == [PropagationSeed(1, 2, (3.0, 2.0, 9.0, 8.0)), PropagationSeed(2, 3, (12.0, 10.0, 19.0, 14.0), 1, 5, within_box=True)]
    assert [c.tolist() for _, c in out["image"].meta[PROMPTS_META_KEY]] == [[1], [], [], [], [], []]
    plain = AttachPromptsd(labels=LABELS, boxes=BOX)({"image": _image()})
    assert plain["image"].meta[PROPAGATION_META_KEY] == []


@pytest.mark.parametrize("entry, image, message", [
    ({"label": 1, "box": [2, 3, 8, 9], "propagate": True}, MetaTensor(torch.rand(1, 20, 30)),
     "box 0: 'propagate' needs a volume; this is a 2D image"),
    ({"label": 1, "box": [2, 3, 1, 8, 9, 1], "propagate": "yes"}, _image(), "box 0: 'propagate' must be true or false"),
    ({"label": 7, "box": [2, 3, 1, 8, 9, 1], "propagate": True}, _image(), "label values [7] are not among the model's"),
])
def test_propagated_box_refusals(entry, image, message):
    with pytest.raises(InputFileError, match=re.escape(message)):
        AttachPromptsd(labels=LABELS, boxes={"boxes": [entry]})({"image": image})


def test_per_slice_boxes_only_refuse_a_propagated_box():
    with pytest.raises(InputFileError, match=r"1 box\(es\) ask to propagate"):
        boxes_to_slice_prompts({"boxes": [{"label": 1, "box": [2, 3, 1, 8, 9, 1], "propagate": True}]}, _image(), "b")


def test_a_class_conditioned_model_takes_auto_with_several_classes():
    out = AttachPromptsd(labels=LABELS, prompt_mode="auto", class_conditioned=True)({"image": _image()})
    assert out["image"].meta[PROMPTS_META_KEY] is None and out["image"].meta[PROPAGATION_META_KEY] == []
