"""Training objectives of chapter 4: denoising score matching in all its forms, the DDPM bound, SM.

    t, w = sample_t(process, n, "importance")                 # training times and importance weights
    loss = dsm_loss(model, x0, weighting="simple").mean()     # L_simple; also sigma2, likelihood, x0, edm, v, velocity
    loss = hybrid_loss(model, x0).mean()                      # improved DDPM: L_simple + lambda L_vlb
"""

from .ddpm import ddpm_log_betas, ddpm_posterior_logvar_learned, hybrid_loss, vlb_term
from .dsm import (
    WEIGHTINGS,
    DSMTerms,
    dsm_loss,
    loss_edm,
    loss_likelihood,
    loss_sigma2,
    loss_simple,
    loss_v,
    loss_velocity,
    loss_x0,
)
from .score_matching import PROJECTIONS, explicit_sm_loss, sliced_sm_loss
from .times import REWEIGHTED, TIME_SAMPLINGS, importance_density, lognormal_density, sample_t
from .vlb import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, normal_kl, prior_kl

__all__ = [
    # training times
    "sample_t",
    "TIME_SAMPLINGS",
    "REWEIGHTED",
    "importance_density",
    "lognormal_density",
    # denoising score matching
    "dsm_loss",
    "DSMTerms",
    "WEIGHTINGS",
    "loss_simple",
    "loss_sigma2",
    "loss_likelihood",
    "loss_x0",
    "loss_edm",
    "loss_v",
    "loss_velocity",
    # DDPM variational bound
    "normal_kl",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "prior_kl",
    "ddpm_log_betas",
    "ddpm_posterior_logvar_learned",
    "vlb_term",
    "hybrid_loss",
    # score matching without noise
    "explicit_sm_loss",
    "sliced_sm_loss",
    "PROJECTIONS",
]
