"""The KL autoencoder (LDM §3): shapes for f = 2 and 4, the KL term against torch.distributions, the
reparameterised sample's moments, bad shapes named."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from kuosan.losses.autoencoder import autoencoder_loss, kl_standard_normal
from kuosan.nets.autoencoder import Autoencoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("mults,side", [((1, 2), 14), ((1, 2, 2), 7)])
def test_encode_decode_shapes(mults, side):
    ae = Autoencoder(1, 28, latent_channels=3, base_channels=16, channel_mults=mults)
    x = torch.randn(2, 1, 28, 28)
    mean, logvar = ae.encode(x)
    assert mean.shape == logvar.shape == (2, 3, side, side) == (2, *ae.latent_shape)
    assert ae.decode(mean).shape == x.shape
    x_hat, m2, _ = ae(x, generator=torch.Generator().manual_seed(0))
    assert x_hat.shape == x.shape and torch.equal(m2, mean)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(5, 4, 7, 7, generator=g, dtype=torch.float64), torch.randn(5, 4, 7, 7, generator=g,
                                                                                        dtype=torch.float64)
    want = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(kl_standard_normal(mean, logvar), want, rtol=1e-12, atol=1e-12)
    assert torch.equal(kl_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))


def test_reparameterised_sample_has_the_posterior_moments():
    mean, logvar = torch.full((200_000, 1), 0.3), torch.full((200_000, 1), -1.0)
    z = Autoencoder.sample(mean, logvar, generator=torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - 0.3) < 0.005 and abs(z.var().item() - torch.tensor(-1.0).exp().item()) < 0.005


def test_loss_is_reconstruction_plus_weighted_kl():
    ae = Autoencoder(1, 8, latent_channels=2, base_channels=8, channel_mults=(1, 2))
    x = torch.randn(3, 1, 8, 8)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    x_hat, mean, logvar = ae(x, generator=g())
    want = (x_hat - x).abs().flatten(1).sum(1) + 0.5 * kl_standard_normal(mean, logvar)
    assert torch.allclose(autoencoder_loss(ae, x, kl_weight=0.5, generator=g()), want)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="must divide by the downsampling factor f=4"):
        Autoencoder(1, 30)
    ae = Autoencoder(1, 28, base_channels=8)
    with pytest.raises(ValueError, match=r"images of shape \(batch, 1, 28, 28\)"):
        ae.encode(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"latents of shape \(batch, 4, 7, 7\)"):
        ae.decode(torch.randn(1, 4, 8, 8))


def test_an_autoencoder_run_records_its_latent_scale(tmp_path):
    """`objective.kind: autoencoder` trains through the ordinary loop; each checkpoint's state records 1/std of the
    posterior means of the training images (here the 8x8 digits, f = 2), for the raw and the EMA weights."""
    import kuosan
    from kuosan.checkpoint import load_checkpoint
    from kuosan.config import parse_config
    from kuosan.registry import build_data
    from kuosan.train import train_from_config
    from kuosan.train.autoencoder import SCALE_EXAMPLES

    cfg = parse_config({"name": "ae", "out_dir": str(tmp_path / "ae"), "data": {"kind": "digits"},
                        "net": {"kind": "autoencoder", "latent_channels": 2, "base_channels": 8,
                                "channel_mults": [1, 2]},
                        "objective": {"kind": "autoencoder"},
                        "train": {"steps": 3, "batch_size": 16, "threads": 1, "progress": False, "tensorboard": False}})
    train_from_config(cfg, log=None)
    ckpt = load_checkpoint(tmp_path / "ae")
    scales = ckpt.state["objective"]["latent_scale"]
    ae = Autoencoder(1, 8, latent_channels=2, base_channels=8, channel_mults=(1, 2))
    ae.load_state_dict(ckpt.ema)
    data = build_data(cfg.data, 0)
    pick = torch.randperm(len(data.x), generator=torch.Generator().manual_seed(0))[:SCALE_EXAMPLES]
    with torch.no_grad():
        z = ae.encode(data.x[pick])[0]
    assert (z * scales["ema"]).std().item() == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError, match="is an autoencoder run"):
        kuosan.load(tmp_path / "ae")
