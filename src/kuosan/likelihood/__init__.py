"""Likelihoods of chapter 4: exact -log p through the PF-ODE, bits/dim, and the DDPM bound (book §4.3.2, §4.1)."""

from .bound import ddpm_vlb
from .bpd import bits_per_dim, dequantize
from .divergence import divergence_exact, divergence_hutchinson
from .ode import METHODS, ode_nll

__all__ = [
    "ode_nll",
    "bits_per_dim",
    "ddpm_vlb",
    "METHODS",
    "dequantize",
    "divergence_exact",
    "divergence_hutchinson",
]
