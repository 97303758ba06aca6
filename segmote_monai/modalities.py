"""The imaging modalities the pre-processing knows, and how each is brought to [0, 1]."""

MODALITIES = {
    "CT": "fixed HU window",
    "MR": "per-volume percentiles",
    "XR": "bit depth (8-bit / 255), else percentiles",
    "RGB": "bit depth (8-bit / 255), else percentiles",
}
