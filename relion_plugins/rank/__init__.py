"""2D class ranking: RELION-style class features, %/Res and class selection rules (numpy only here;
the ranker network lives in its own module so that importing this package never imports torch)."""

from __future__ import annotations

from .features import (
    CNN_SIZE,
    FEATURE_NAMES,
    ClassFeatures,
    JobFeatures,
    class_feature_details,
    class_features,
    class_image_for_cnn,
    feature_names,
    job_features,
    normalize_features,
)
from .selection import Selection, adaptive_threshold, percent_per_resolution, select_classes

__all__ = [
    "CNN_SIZE",
    "FEATURE_NAMES",
    "ClassFeatures",
    "JobFeatures",
    "Selection",
    "adaptive_threshold",
    "class_feature_details",
    "class_features",
    "class_image_for_cnn",
    "feature_names",
    "job_features",
    "normalize_features",
    "percent_per_resolution",
    "select_classes",
]
