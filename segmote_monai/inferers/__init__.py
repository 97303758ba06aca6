from segmote_monai.inferers.prompted import PromptedSliceInferer
from segmote_monai.inferers.propagation import PropagationSeed, propagate
from segmote_monai.inferers.slices import (
    OVERLAP_RULES,
    SlicePrompts,
    SliceSegmenter,
    merge_masks,
    prompts_from_label,
)

__all__ = ["OVERLAP_RULES", "PromptedSliceInferer", "PropagationSeed", "SlicePrompts", "SliceSegmenter",
           "merge_masks", "prompts_from_label", "propagate"]
