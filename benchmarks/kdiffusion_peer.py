"""k-diffusion (Crowson, github.com/crowsonkb/k-diffusion, the sampler code behind AUTOMATIC1111 and ComfyUI) as a
peer for the sampler benchmarks and the name cross-checks.

    from kdiffusion_peer import k_diffusion, sigma_model
    K = k_diffusion()                                   # None when the package is not installed
    sigmas = K.sampling.get_sigmas_karras(9, s_min, s_max)
    x0 = K.sampling.sample_dpmpp_2m(sigma_model(den), x_T / alpha_max, sigmas, disable=True)

The package's `__init__` imports its training stack (clip, kornia, torchvision, wandb, ...); only `sampling.py`
and `external.py` are needed here, so they are loaded from the installed package directly. `make test` installs
`k-diffusion==0.1.1.post1` without its dependencies, plus `torchsde` and `torchdiffeq`, which `sampling.py`
imports. Where torchvision is missing, `k_diffusion.utils` is replaced by a module holding the one function the
two files use (`append_dims`: broadcast a per-row sigma over the data dimensions).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch

__all__ = ["k_diffusion", "sigma_model", "discrete_eps_model"]

_LOADED: types.SimpleNamespace | None = None


def _append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """x with trailing singleton dimensions up to target_dims (what k_diffusion.utils.append_dims does)."""
    if x.ndim > target_dims:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}")
    return x.reshape(*x.shape, *([1] * (target_dims - x.ndim)))


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def k_diffusion() -> types.SimpleNamespace | None:
    """(sampling, external, version) of the installed k-diffusion, or None where it is not installed."""
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    spec = importlib.util.find_spec("k_diffusion")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    package = sys.modules.get("k_diffusion")
    if package is None or not hasattr(package, "sampling"):
        package = types.ModuleType("k_diffusion")
        package.__path__ = [str(root)]
        sys.modules["k_diffusion"] = package
        try:
            package.utils = _load_file("k_diffusion.utils", root / "utils.py")
        except ImportError:  # torchvision (or PIL) missing: the one helper sampling.py / external.py use
            package.utils = types.ModuleType("k_diffusion.utils")
            package.utils.append_dims = _append_dims
            sys.modules["k_diffusion.utils"] = package.utils
        package.sampling = _load_file("k_diffusion.sampling", root / "sampling.py")
        package.external = _load_file("k_diffusion.external", root / "external.py")
    from importlib.metadata import version

    _LOADED = types.SimpleNamespace(sampling=package.sampling, external=package.external,
                                    version=version("k-diffusion"))
    return _LOADED


def sigma_model(denoiser, cond: dict | None = None):
    """A kuosan Denoiser as k-diffusion's model(x, sigma) -> denoised, in its variance-exploding coordinates
    x = x_t / alpha(t) with sigma = sigma(t)/alpha(t): the same function of the noise level that kuosan's
    samplers evaluate, so the two tools differ only by their update rules and grids."""
    p = denoiser.process

    def model(x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        s = sigma.to(torch.float64).reshape(-1)
        t = p.t_of_log_snr(-torch.log(s))
        a = p.alpha(t).to(x).reshape(-1, *[1] * (x.ndim - 1))
        return denoiser.x0(x * a, t.to(x.device), **(cond or {}))

    return model


def discrete_eps_model(eps_at_index, alphas_cumprod: torch.Tensor, quantize: bool = True):
    """A model that predicts eps at the training indices 0 .. N-1 through k-diffusion's own wrapper
    (external.DiscreteEpsDDPMDenoiser, as AUTOMATIC1111 and ComfyUI drive a Stable-Diffusion U-Net): sigmas are
    quantised to the nearest training index (quantize=True, their default) or interpolated in log sigma."""
    K = k_diffusion()

    class Inner(torch.nn.Module):
        def forward(self, x, t, **kw):
            return eps_at_index(x, t, **kw)

    return K.external.DiscreteEpsDDPMDenoiser(Inner(), alphas_cumprod, quantize=quantize)
