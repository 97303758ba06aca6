"""SegMoTE-MONAI: token-level mixture of experts on a frozen Segment Anything Model."""

__version__ = "0.1.0"
