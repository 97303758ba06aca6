from segmote_monai.networks.backbones import BACKBONE_NAMES, Backbone, build_backbone
from segmote_monai.networks.checkpoint import load_trainable, read_trainable, save_trainable, trainable_state_dict
from segmote_monai.networks.decoder import DecoderOutput, MoTEMaskDecoder
from segmote_monai.networks.mote import ExpertFFNs, NoisyTopKRouter, RoutingOutput, TokenMoE, top_k_gates
from segmote_monai.networks.ppt import ProgressivePromptTokenizer
from segmote_monai.networks.presence import PresenceHead
from segmote_monai.networks.segmote import PromptedForward, SegMoTE, SegMoTEOutput, build_from_checkpoint, build_segmote

__all__ = [
    "BACKBONE_NAMES",
    "Backbone",
    "DecoderOutput",
    "ExpertFFNs",
    "MoTEMaskDecoder",
    "NoisyTopKRouter",
    "PresenceHead",
    "ProgressivePromptTokenizer",
    "PromptedForward",
    "RoutingOutput",
    "SegMoTE",
    "SegMoTEOutput",
    "TokenMoE",
    "build_backbone",
    "build_from_checkpoint",
    "build_segmote",
    "load_trainable",
    "read_trainable",
    "save_trainable",
    "top_k_gates",
    "trainable_state_dict",
]
