from segmote_monai.data.readers import is_2d_path, load_image
from segmote_monai.data.slicing import (
    SLICE_AXES,
    check_pair,
    orient_for_slicing,
    restore_grid,
    slices_to_volume,
    stored_slice_axis,
    volume_to_slices,
)

__all__ = [
    "SLICE_AXES",
    "check_pair",
    "is_2d_path",
    "load_image",
    "orient_for_slicing",
    "restore_grid",
    "slices_to_volume",
    "stored_slice_axis",
    "volume_to_slices",
]
