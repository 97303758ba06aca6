from segmote_monai.handlers.checkpoint import TrainableCheckpointSaver
from segmote_monai.handlers.class_dice import ClassDiceMetrics
from segmote_monai.handlers.mlflow_extras import MLflowExtras
from segmote_monai.handlers.ppt_schedule import PPTCarrierSchedule, carrier_probability
from segmote_monai.handlers.resume import TrainingResume
from segmote_monai.handlers.routing_stats import RoutingStatistics

__all__ = [
    "ClassDiceMetrics",
    "MLflowExtras",
    "PPTCarrierSchedule",
    "RoutingStatistics",
    "TrainableCheckpointSaver",
    "TrainingResume",
    "carrier_probability",
]
