from segmote_monai.inferers.slices import (
    OVERLAP_RULES,
    PromptedSliceInferer,
    SlicePrompts,
    SliceSegmenter,
    merge_masks,
    prompts_from_label,
)

__all__ = ["OVERLAP_RULES", "PromptedSliceInferer", "SlicePrompts", "SliceSegmenter", "merge_masks",
           "prompts_from_label"]
