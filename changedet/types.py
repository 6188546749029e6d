"""Literal aliases for the string choices of the public API (no runtime dependencies)."""

from __future__ import annotations

from typing import Literal

Fusion = Literal["diff", "absdiff", "concat", "l1", "l2", "cosine"]
Distance = Literal["l1", "l2", "cosine"]
Resampling = Literal["nearest", "bilinear", "cubic", "average"]
Blend = Literal["cosine", "mean", "center-crop"]
Precision = Literal["float32", "bf16"]
Method = Literal["model", "cva", "irmad", "dsfa"]
ThresholdMethod = Literal["f1", "otsu", "fixed"]
Scaling = Literal["auto", "none", "dtype", "percentile"]
SeriesMode = Literal["consecutive", "reference"]
TTA = Literal["none", "flip", "d4", "swap", "flip+swap", "d4+swap"]  # changedet.inference.TTA_MODES
