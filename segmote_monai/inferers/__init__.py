from segmote_monai.inferers.slices import SlicePrompts, SliceSegmenter, prompts_from_label

__all__ = ["SlicePrompts", "SliceSegmenter", "prompts_from_label"]
