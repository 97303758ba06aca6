"""The bundle's workflows as Python objects: evaluation and inference (training is MONAI's SupervisedTrainer)."""
