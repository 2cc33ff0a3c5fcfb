"""DDPM's discrete-time process (book §4.1) as a continuous-time VP process (the DPM-Solver convention)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Process

__all__ = ["DiscreteVP"]


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x, xp increasing; linear extrapolation at both ends."""
    xp, fp = xp.to(x.device, x.dtype), fp.to(x.device, x.dtype)
    i = torch.searchsorted(xp, x.detach().contiguous()).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    return f0 + (f1 - f0) * (x - x0) / (x1 - x0)


class DiscreteVP(Process):
    """DDPM's betas beta_1..beta_N (book eq. 4.2) seen in continuous time.

    Training index i in {0..N-1} sits at t_i = (i+1)/N with alpha(t_i)^2 = alpha-bar_i = prod_{j<=i}(1-beta_j)
    (book eq. 4.8). Between grid points log alpha is linear in t (DPM-Solver, arXiv:2206.00927, App. D), and
    t = 0 is the clean data (alpha = 1, the "alpha-bar_0 = 1" of DDIM), so any continuous-time solver runs on a
    discrete model and f(t) = d log alpha/dt is piecewise constant.
    """

    def __init__(self, betas: Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 2 or not ((betas > 0) & (betas < 1)).all():
            raise ValueError("betas must be a 1-D sequence of at least 2 values, each in (0, 1)")
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.n = betas.numel()
        self.t_min, self.t_max = 1.0 / self.n, 1.0
        # knots: t = 0, 1/N, ..., 1 ; log alpha = 0, 1/2 log abar_0, ..., 1/2 log abar_{N-1}
        self._t = torch.arange(self.n + 1, dtype=torch.float64) / self.n
        self._log_alpha = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * torch.log(self.alphas_cumprod)])

    # --- constructors (book §4.1; improved DDPM) -------------------------------------------------
    @classmethod
    def linear(cls, n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteVP:
        """Linear betas of DDPM (Ho et al. 2020, arXiv:2006.11239, §4)."""
        return cls(torch.linspace(beta_start, beta_end, n, dtype=torch.float64))

    @classmethod
    def scaled_linear(cls, n: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> DiscreteVP:
        """Linear in sqrt(beta) (latent diffusion / Stable Diffusion)."""
        return cls(torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2)

    @classmethod
    def cosine(cls, n: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DiscreteVP:
        """Cosine alpha-bar(t) = cos^2((t + s)/(1 + s) pi/2) (Nichol & Dhariwal 2021, arXiv:2102.09672, eq. 17).

        beta_i = min(1 - abar((i+1)/N) / abar(i/N), max_beta), the clipping of the paper.
        """

        def abar(u: Tensor) -> Tensor:
            return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        u = torch.arange(n + 1, dtype=torch.float64) / n
        return cls(torch.clamp(1 - abar(u[1:]) / abar(u[:-1]), max=max_beta))

    @classmethod
    def from_betas(cls, betas) -> DiscreteVP:
        """Any given betas."""
        return cls(torch.as_tensor(betas, dtype=torch.float64))

    # --- index <-> continuous time ---------------------------------------------------------------
    def t_of_index(self, i: Tensor | int) -> Tensor:
        """Continuous time t_i = (i+1)/N of training index i."""
        return (torch.as_tensor(i, dtype=torch.float64) + 1) / self.n

    def index_of_t(self, t: Tensor) -> Tensor:
        """Nearest training index of continuous time t (round(t N) - 1, clamped to 0..N-1)."""
        return (torch.round(t * self.n) - 1).clamp(0, self.n - 1).long()

    def sample_t(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64, device=None
    ) -> Tensor:
        """n training times t_i = (i+1)/N with i uniform on {0..N-1} (book Algorithm 1, line 3)."""
        i = torch.randint(0, self.n, (n,), generator=generator, device=device)
        return (i + 1).to(dtype) / self.n  # int / int would round to the default float32 first

    # --- the process ----------------------------------------------------------------------------
    def log_alpha(self, t: Tensor) -> Tensor:
        # knots are uniform (k/N), so the segment is floor(t N): no search needed (linear extrapolation outside)
        la = self._table(t)
        u = t * self.n
        k = torch.floor(u.detach()).clamp(0, self.n - 1)
        i = k.long()
        return la[i] + (la[i + 1] - la[i]) * (u - k)

    def _table(self, t: Tensor) -> Tensor:
        """log alpha at the knots, cached on t's device and dtype."""
        key = (t.device, t.dtype)
        cache = self.__dict__.setdefault("_tables", {})
        if key not in cache:
            cache[key] = self._log_alpha.to(t.device, t.dtype)
        return cache[key]

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def log_snr(self, t: Tensor) -> Tensor:
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2 * la))

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        """Invert lambda through -log alpha = 1/2 softplus(-2 lambda), then the piecewise-linear log alpha."""
        neg_la = 0.5 * torch.nn.functional.softplus(-2 * lam)
        return _interp(neg_la, -self._log_alpha, self._t)

    def f(self, t: Tensor) -> Tensor:
        """Piecewise-constant slope of log alpha: N/2 log(1 - beta_i) on (t_{i-1}, t_i]."""
        i = torch.ceil(t * self.n - 1e-9).clamp(1, self.n).long()
        la = self._table(t)
        return (la[i] - la[i - 1]) * self.n

    def g2(self, t: Tensor) -> Tensor:
        """alpha^2 + sigma^2 = 1 gives g^2 = -2 f (the continuous beta(t))."""
        return -2 * self.f(t)

    @property
    def prior_std(self) -> float:
        return 1.0

    # --- DDIM's integer grids -------------------------------------------------------------------
    def timesteps(self, n: int, kind: str = "logsnr", **kw) -> Tensor:
        """As Process.timesteps, plus DDIM's integer grids "leading" and "trailing" (Lin et al. 2023,
        arXiv:2305.08891, Table 2): n model times on training indices, followed by t = 0 (clean data)."""
        if kind not in ("leading", "trailing"):
            return super().timesteps(n, kind, **kw)
        if not 1 <= n <= self.n:
            raise ValueError(f"an integer grid needs 1 <= n <= N={self.n}, got n={n}")
        if kind == "leading":
            idx = torch.arange(n - 1, -1, -1, dtype=torch.float64) * (self.n // n)
        else:
            idx = torch.round(torch.arange(self.n, 0, -self.n / n, dtype=torch.float64)) - 1
        t = torch.cat([self.t_of_index(idx), torch.zeros(1, dtype=torch.float64)])
        return t.to(kw.get("dtype", torch.float64))

    def __repr__(self) -> str:
        return f"DiscreteVP(n={self.n}, beta_1={self.betas[0].item():.3g}, beta_N={self.betas[-1].item():.3g})"
