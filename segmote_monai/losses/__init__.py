from segmote_monai.losses.balance import cv_squared, load_balance_loss, smooth_load
from segmote_monai.losses.dice_balance import DiceBalanceLoss

__all__ = ["DiceBalanceLoss", "cv_squared", "load_balance_loss", "smooth_load"]
