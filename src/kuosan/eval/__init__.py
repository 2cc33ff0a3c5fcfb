"""Sample quality: Frechet distance, KID, precision/recall, sliced Wasserstein, MMD, and the NFE report.

    from kuosan.eval import frechet_distance, digits_features, run_eval
    frechet_distance(digits_features(samples), digits_features(real))
    run_eval("runs/demo", samplers=["dpmpp-2m", "ddim", "ddpm"], nfes=[5, 10, 20, 50, 1000], nll=True)
"""

from .evaluate import Reference, build_reference, draw_samples, quality
from .features import digits_classifier, digits_feature_info, digits_features, inception_features
from .metrics import (
    frechet_distance,
    frechet_distance_gaussians,
    gaussian_stats,
    kid,
    mmd,
    precision_recall,
    sliced_wasserstein,
    wasserstein_1d,
)
from .nll import heldout_nll, to_uint8
from .report import evaluate, run_eval

__all__ = [
    "Reference", "build_reference", "draw_samples", "quality", "digits_classifier", "digits_feature_info",
    "digits_features", "inception_features", "frechet_distance", "frechet_distance_gaussians", "gaussian_stats",
    "kid", "mmd", "precision_recall", "sliced_wasserstein", "wasserstein_1d", "heldout_nll", "to_uint8",
    "evaluate", "run_eval",
]
