from segmote_monai.engines.iterations import PromptedTrainIteration, VolumeEvalIteration
from segmote_monai.engines.step import PROMPT_MODES, embed_batch, prompted_forward, training_iteration, unwrap

__all__ = [
    "PROMPT_MODES",
    "PromptedTrainIteration",
    "VolumeEvalIteration",
    "embed_batch",
    "prompted_forward",
    "training_iteration",
    "unwrap",
]
