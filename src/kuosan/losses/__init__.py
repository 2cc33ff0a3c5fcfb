"""Training objectives of chapter 4: denoising score matching in all its forms, the DDPM bound, SM."""

from .vlb import discretized_gaussian_log_likelihood, normal_kl

__all__ = ["discretized_gaussian_log_likelihood", "normal_kl"]
