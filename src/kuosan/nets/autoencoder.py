"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, arXiv:2112.10752, §3 and App. G; book
§4.8.1): a convolutional encoder to the mean and log-variance of a diagonal Gaussian q(z | x) over a latent image
of `latent_channels` x H/f x W/f (f = 2^(levels - 1)), and a decoder back. No diffusion math lives here: the
KL term is kuosan.losses.kl_diagonal_gaussian, the latent scale factor lives with the trained run.

    ae = Autoencoder(1, 28, latent_channels=4, channel_mults=(1, 2, 2))   # 28x28 -> 4 x 7 x 7 (f = 4)
    mean, logvar = ae.encode(x);  z = ae.sample(mean, logvar, generator=g);  x_hat = ae.decode(z)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .unet import norm_groups

__all__ = ["Autoencoder"]


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual (LDM's ResnetBlock without a time embedding)."""

    def __init__(self, c_in: int, c_out: int, groups: int | None):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(norm_groups(c_in, groups), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(norm_groups(c_out, groups), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Autoencoder(nn.Module):
    """Encoder x (B, C, H, W) -> (mean, logvar) each (B, latent_channels, H/f, W/f); decoder z -> x (B, C, H, W).

    Args:
        in_channels, image_size: the images (image_size divisible by f).
        latent_channels: channels of z. base_channels x channel_mults: widths per level; one stride-2 convolution
            between levels, so f = 2^(len(channel_mults) - 1). num_res_blocks: per level. groups: GroupNorm
            groups (None: kuosan's automatic rule, as the U-Net).
        logvar_clamp: log-variances are clamped to [-30, 20] as in LDM's DiagonalGaussianDistribution.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        latent_channels: int = 4,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        groups: int | None = None,
    ):
        super().__init__()
        self.f = 2 ** (len(channel_mults) - 1)
        if image_size % self.f:
            raise ValueError(f"image_size={image_size} must divide by the downsampling factor f={self.f} "
                             f"(channel_mults has {len(channel_mults)} levels)")
        self.in_channels, self.image_size, self.latent_channels = in_channels, image_size, latent_channels
        self.channel_mults = tuple(channel_mults)
        widths = [base_channels * m for m in channel_mults]
        enc: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        c = widths[0]
        for i, w in enumerate(widths):
            for _ in range(num_res_blocks):
                enc.append(ResBlock(c, w, groups))
                c = w
            if i < len(widths) - 1:
                enc.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        enc += [ResBlock(c, c, groups), nn.GroupNorm(norm_groups(c, groups), c), nn.SiLU(),
                nn.Conv2d(c, 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, c, 3, padding=1), ResBlock(c, c, groups)]
        for i, w in reversed(list(enumerate(widths))):
            for _ in range(num_res_blocks):
                dec.append(ResBlock(c, w, groups))
                c = w
            if i > 0:
                dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
        dec += [nn.GroupNorm(norm_groups(c, groups), c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.image_size // self.f
        return (self.latent_channels, s, s)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, logvar) of q(z | x), logvar clamped to [-30, 20]."""
        want = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"the autoencoder takes images of shape (batch, {', '.join(map(str, want))}); "
                             f"got {tuple(x.shape)}")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    @staticmethod
    def sample(mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + exp(logvar / 2) eps (the reparameterisation, Kingma & Welling 2014, arXiv:1312.6114, eq. 10)."""
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(0.5 * logvar) * eps

    def decode(self, z: Tensor) -> Tensor:
        if z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"the decoder takes latents of shape (batch, {', '.join(map(str, self.latent_shape))}); "
                             f"got {tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction of a posterior sample, mean, logvar)."""
        mean, logvar = self.encode(x)
        return self.decode(self.sample(mean, logvar, generator)), mean, logvar
