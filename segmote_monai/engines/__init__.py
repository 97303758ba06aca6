from segmote_monai.engines.step import PROMPT_MODES, embed_batch, prompted_forward, training_iteration

__all__ = ["PROMPT_MODES", "embed_batch", "prompted_forward", "training_iteration"]
