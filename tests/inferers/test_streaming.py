"""Inference memory grows with the input and output arrays only, not with what is computed per slice."""

from __future__ import annotations

import subprocess
import sys

from tests.bundle.conftest import REPO

SCRIPT = """
import resource, sys, torch
from segmote_monai.inferers import SliceSegmenter
from tests.conftest import tiny_segmote
slices = int(sys.argv[1])
model = tiny_segmote(num_ppt_queries=2).eval()
image = torch.rand(1, 256, 256, slices)  # [C, H, W, S], float32
SliceSegmenter(model, backbone="tiny", batch_size=8)(image[:, :, :, :2])  # warm-up: allocator pools, lazy imports
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
label = SliceSegmenter(model, backbone="tiny", batch_size=8)(image)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, label.numel())
"""


def _peak_growth_kib(slices: int) -> int:
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(slices)], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return int(run.stdout.split()[0])


def test_prompt_free_inference_streams_slice_batches():
    small, large = _peak_growth_kib(16), _peak_growth_kib(400)
    per_slice_arrays_kib = 256 * 256 * 1 / 1024  # the uint8 output; the float32 input exists before both
    # a 384-slice difference: the output grows by 24 MiB; holding per-slice float32 logits or pre-processed
    # copies would add at least 4x that
    assert large - small <= 384 * per_slice_arrays_kib * 2 + 32 * 1024, (small, large)
