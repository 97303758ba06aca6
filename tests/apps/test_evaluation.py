from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from segmote_monai.apps.evaluation import BundleEvaluation, zero_shot_like
from segmote_monai.data.datalist import load_datalist
from segmote_monai.transforms import LoadPaird, ScaleIntensityByModalityd
from tests.conftest import tiny_segmote


def _png_datalist(folder, masks, seed, **header):
    """A test-only datalist of random grey images beside ``masks`` (patients p0, p1, ...)."""
    rng = np.random.default_rng(seed)
    items = []
    for n, mask in enumerate(masks):
        Image.fromarray((rng.random(mask.shape) * 255).astype(np.uint8)).save(folder / f"img{n}.png")
        Image.fromarray(mask).save(folder / f"img{n}_mask.png")
        items.append({"image": f"img{n}.png", "label": f"img{n}_mask.png", "patient": f"p{n}"})
    (folder / "datalist.json").write_text(json.dumps({**header, "test": items}))
    return load_datalist(folder / "datalist.json")


@pytest.fixture
def binary_datalist(tmp_path):
    masks = [np.zeros((40, 56), np.uint8) for _ in range(2)]
    for n, mask in enumerate(masks):
        mask[8 + n: 30, 10: 40 - n] = 255
    return _png_datalist(tmp_path, masks, 0, modality="XR", labels={"0": "background", "1": "lesion"},
                         mask_threshold=127)


def _evaluation(datalist, out, network=None, **kwargs):
    load = LoadPaird(**datalist.label_encoding())
    scale = ScaleIntensityByModalityd(keys="image")
    return BundleEvaluation(network=tiny_segmote(num_ppt_queries=2) if network is None else network,
                            datalist=datalist, load=lambda item: scale(load(item)), backbone="tiny", output_dir=out,
                            **kwargs)


@pytest.mark.parametrize("baselines,models", [
    (None, {"segmote", "zero_shot"}),
    ({}, {"segmote"}),
    ("two", {"segmote", "zero_shot", "other"}),
])
def test_every_model_is_scored_on_the_same_settings(binary_datalist, tmp_path, baselines, models):
    if baselines == "two":
        other = tiny_segmote()
        baselines = {"zero_shot": zero_shot_like(other), "other": other}
    summary = _evaluation(binary_datalist, tmp_path / "out", baselines=baselines).run()
    rows = summary["per_case"]
    assert {r["model"] for r in rows} == models
    for model in models - {"segmote"}:  # baselines: boxes only, every case
        assert {(r["case"], r["setting"]) for r in rows if r["model"] == model} == {
            (c, s) for c in ("p0", "p1") for s in ("box_tight", "box_jitter_0.1")}
    assert {r["setting"] for r in rows if r["model"] == "segmote"} == {"box_tight", "box_jitter_0.1", "prompt_free"}
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["overlap"] == "smaller" and written["per_case"] == rows
    assert (tmp_path / "out" / "metrics.csv").exists()


def test_a_baseline_may_not_take_the_evaluated_networks_name(binary_datalist, tmp_path):
    with pytest.raises(ValueError, match="'segmote' names the evaluated network"):
        _evaluation(binary_datalist, tmp_path, baselines={"segmote": tiny_segmote()})


def _sam_dice(model, datalist, jitter):
    """Dice per case from SAM's own MaskDecoder, called directly on the boxes the evaluation uses."""
    from segmote_monai.inferers.slices import SliceSegmenter, prompts_from_label
    from segmote_monai.transforms.array import scale_boxes

    load = LoadPaird(**datalist.label_encoding())
    scale = ScaleIntensityByModalityd(keys="image")
    segmenter = SliceSegmenter(model, backbone="tiny")
    out = {}
    for item in datalist.items("test"):
        case = scale(load(item))
        image, label = case["image"], case["label"]
        (boxes, _), = prompts_from_label(label, datalist.classes, jitter=jitter, seed=0)
        hw = tuple(image.shape[-2:])
        embedding = model.embed_images(segmenter.preprocess(image)[None])
        sparse, dense = model.prompt_encoder(points=None, boxes=scale_boxes(boxes, hw, 64), masks=None)
        with torch.no_grad():
            low, _ = model.decoder.mask_decoder(image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                multimask_output=False)
        logits = torch.nn.functional.interpolate(low, size=(64, 64), mode="bilinear", align_corners=False)
        pred = segmenter._unresize(logits, hw)[0] > 0
        truth = label > 0
        out[item["patient"]] = float(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))
    return out


@pytest.mark.parametrize("jitter", [0.0, 0.1])
def test_zero_shot_scores_are_sams_own_decoder_on_the_same_boxes(binary_datalist, tmp_path, jitter):
    evaluation = _evaluation(binary_datalist, tmp_path / "out")
    summary = evaluation.run()
    setting = "box_tight" if jitter == 0 else "box_jitter_0.1"
    ours = {r["case"]: r["dice"] for r in summary["per_case"]
            if r["model"] == "zero_shot" and r["setting"] == setting and r["scoring"] == "own_mask"}
    expected = _sam_dice(evaluation.network, binary_datalist, jitter)
    assert ours == pytest.approx(expected, abs=1e-6)
    # an untrained SegMoTE starts at SAM's prediction: the same Dice on every case
    segmote = {r["case"]: r["dice"] for r in summary["per_case"]
               if r["model"] == "segmote" and r["setting"] == setting and r["scoring"] == "own_mask"}
    assert segmote == pytest.approx(expected, abs=1e-6)


def test_label_map_and_own_mask_scores_of_one_class(binary_datalist, tmp_path):
    """With one class per case there is nothing to overlap: both scorings agree, and the means are the per-case
    means with a bootstrap interval around them."""
    summary = _evaluation(binary_datalist, tmp_path / "out").run()
    rows = summary["per_case"]
    for setting in ("box_tight", "prompt_free"):
        own = sorted(r["dice"] for r in rows if r["setting"] == setting and r["model"] == "segmote"
                     and r["scoring"] == "own_mask")
        merged = sorted(r["dice"] for r in rows if r["setting"] == setting and r["model"] == "segmote"
                        and r["scoring"] == "label_map")
        assert own == pytest.approx(merged) and len(own) == 2
        mean = next(r for r in summary["results"] if r["setting"] == setting and r["model"] == "segmote"
                    and r["class"] == "mean over classes" and r["scoring"] == "own_mask")
        assert mean["mean_dice"] == pytest.approx(np.mean(own)) and mean["ci95"][0] <= mean["mean_dice"] <= mean["ci95"][1]


@pytest.fixture
def two_class_datalist(tmp_path):
    """Two images, each with a ring (class 1) around a disc (class 2): the myocardium-and-ventricle layout."""
    masks = [np.zeros((48, 48), np.uint8) for _ in range(2)]
    for n, mask in enumerate(masks):
        mask[6 + n: 40, 8: 42 - n] = 1
        mask[14: 32 - n, 16 + n: 34] = 2
    return _png_datalist(tmp_path, masks, 1, modality="MR", task="multi-class",
                         labels={"0": "background", "1": "ring", "2": "disc"})


def _spy(model):
    """Records the ``class_ids`` (None for none) and whether boxes were given, per ``predict`` call."""
    calls, predict = [], model.predict

    def record(**kwargs):
        class_ids = kwargs.get("class_ids")
        calls.append((kwargs.get("boxes") is not None, None if class_ids is None else sorted(set(class_ids.tolist()))))
        return predict(**kwargs)

    model.predict = record
    return calls


@pytest.mark.parametrize("class_boxes", [False, True])
def test_class_boxes_give_the_network_each_boxs_class_and_the_baseline_none(two_class_datalist, tmp_path,
                                                                            class_boxes):
    network = tiny_segmote(num_ppt_queries=2, num_condition_classes=3)
    baseline = zero_shot_like(network)
    ours, theirs = _spy(network), _spy(baseline)
    summary = _evaluation(two_class_datalist, tmp_path / "out", network, baselines={"zero_shot": baseline},
                          jitters=(0.0,), class_boxes=class_boxes, prompt_free=False).run()
    assert [c for boxed, c in ours if boxed] == ([[1, 2]] * 2 if class_boxes else [None] * 2)
    assert [c for _, c in theirs] == [None] * 2
    assert {r["setting"] for r in summary["per_case"]} == {"box_tight"}


def test_a_joint_models_class_ids_are_the_datalists_values_plus_its_offset(two_class_datalist, tmp_path):
    network = tiny_segmote(num_ppt_queries=2, num_condition_classes=6)
    calls = _spy(network)
    summary = _evaluation(two_class_datalist, tmp_path / "out", network, baselines={}, jitters=(0.0,),
                          class_boxes=True, class_offset=3).run()
    assert [c for _, c in calls] == [[4, 5]] * 4  # two images, boxed and prompt-free
    assert {r["class"] for r in summary["per_case"]} == {"ring", "disc"}  # scored on the datalist's own values
    calls.clear()
    summary = _evaluation(two_class_datalist, tmp_path / "none", network, baselines={}, jitters=(0.0,),
                          class_offset=None).run()
    assert {r["setting"] for r in summary["per_case"]} == {"box_tight"} and [c for _, c in calls] == [None] * 2
    with pytest.raises(ValueError, match="class_boxes: the model was trained on other datalists"):
        _evaluation(two_class_datalist, tmp_path / "refused", network, class_boxes=True, class_offset=None)


def test_a_class_conditioned_model_is_scored_with_no_prompt_by_asking_for_every_class(two_class_datalist, tmp_path):
    from segmote_monai.inferers.slices import SliceSegmenter
    from segmote_monai.metrics import dice_per_class

    network = tiny_segmote(num_ppt_queries=2, num_condition_classes=3)
    calls = _spy(network)
    evaluation = _evaluation(two_class_datalist, tmp_path / "out", network, baselines={}, jitters=(0.0,))
    summary = evaluation.run()
    assert [c for boxed, c in calls if not boxed] == [[1, 2]] * 2
    ours = {(r["case"], r["class"]): r["dice"] for r in summary["per_case"]
            if r["setting"] == "prompt_free" and r["scoring"] == "label_map"}
    segmenter = SliceSegmenter(network, backbone="tiny")
    expected = {}
    for item in two_class_datalist.items("test"):
        case = evaluation.load(item)
        labels = segmenter(case["image"], None, auto_classes=[1, 2])
        for c, d in dice_per_class(labels, case["label"], [1, 2]).items():
            expected[(item["patient"], two_class_datalist.labels[c])] = d
    assert ours == pytest.approx(expected)


@pytest.mark.parametrize("options,message", [
    ({"class_boxes": True}, "class_boxes needs a model trained with class-conditioned PPT"),
    ({"prompt_free": True}, "prompt-free evaluation needs PPT on a binary task or class-conditioned PPT"),
])
def test_class_options_a_model_cannot_honour_are_refused(two_class_datalist, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        _evaluation(two_class_datalist, tmp_path, **options)
    # where the checkpoint file is known, the refusal names it (the model, not the option, is what lacks it)
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / 'm.pt'))}: {message}"):
        _evaluation(two_class_datalist, tmp_path, checkpoint=tmp_path / "m.pt", **options)


@pytest.mark.parametrize("refine", [None, 0.5])
def test_the_prompt_free_row_is_refined_as_inference_refines_it(binary_datalist, tmp_path, monkeypatch, refine):
    import segmote_monai.apps.evaluation as evaluation_module

    asked = []

    class Recording(evaluation_module.SliceSegmenter):
        def __call__(self, image, prompts=None, **kwargs):
            asked.append((prompts is None, kwargs["prompt_free_refine"]))
            return super().__call__(image, prompts, **kwargs)

    monkeypatch.setattr(evaluation_module, "SliceSegmenter", Recording)
    _evaluation(binary_datalist, tmp_path / "out", prompt_free_refine=refine).run()
    # the network's prompt-free calls get the option; its box calls and the zero-shot baseline's never do
    assert {r for p, r in asked if p} == {refine} and {r for p, r in asked if not p} == {None}


@pytest.mark.parametrize("volume", [False, True])
def test_automatic_rows_are_refined_on_2d_images_only(two_class_datalist, tmp_path, monkeypatch, volume):
    import segmote_monai.apps.evaluation as evaluation_module

    asked = []

    class Recording(evaluation_module.SliceSegmenter):
        def __call__(self, image, prompts=None, **kwargs):
            if prompts is None:
                asked.append(kwargs["prompt_free_refine"])
            return super().__call__(image, prompts, **kwargs)

    monkeypatch.setattr(evaluation_module, "SliceSegmenter", Recording)
    load = LoadPaird(**two_class_datalist.label_encoding())
    scale = ScaleIntensityByModalityd(keys="image")

    def loader(item):
        case = scale(load(item))
        # a one-slice volume [C, H, W, 1]: the inference keeps a volume's per-slice automatic masks unrefined
        return {**case, "image": case["image"][..., None], "label": case["label"][..., None]} if volume else case

    network = tiny_segmote(num_ppt_queries=2, num_condition_classes=3)
    BundleEvaluation(network=network, datalist=two_class_datalist, load=loader, backbone="tiny",
                     output_dir=tmp_path / "out", baselines={}, jitters=(0.0,), prompt_free_refine=0.5).run()
    assert asked == [None if volume else 0.5] * 2


def test_a_prompt_free_refine_outside_0_1_is_refused(binary_datalist, tmp_path):
    with pytest.raises(ValueError, match=r"prompt_free_refine must be in \[0, 1\] \(or null\), got -1"):
        _evaluation(binary_datalist, tmp_path / "out", prompt_free_refine=-1)
