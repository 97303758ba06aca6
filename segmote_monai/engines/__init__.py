from segmote_monai.engines.iterations import PromptedTrainIteration, VolumeEvalIteration
from segmote_monai.engines.step import (
    PROMPT_MODES,
    RowGroup,
    decode_rows,
    embed_batch,
    plan_rows,
    training_iteration,
    unwrap,
)

__all__ = [
    "PROMPT_MODES",
    "PromptedTrainIteration",
    "RowGroup",
    "VolumeEvalIteration",
    "decode_rows",
    "embed_batch",
    "plan_rows",
    "training_iteration",
    "unwrap",
]
