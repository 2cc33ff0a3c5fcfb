"""Latent diffusion end to end on the 8x8 digits with a tiny autoencoder (f = 2: latents 2 x 4 x 4): the latent
data set has unit std through the stored scale, a latent run carries its autoencoder, round-trips through
kuosan.load / kuosan sample / kuosan eval in image space, and bad inputs are named."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import kuosan
from kuosan.cli import app
from kuosan.config import parse_config
from kuosan.latent import load_codec
from kuosan.registry import build_data
from kuosan.train import train_from_config

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = {"threads": 1, "progress": False, "tensorboard": False, "sample_every": 0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    torch.set_num_threads(1)
    ae = parse_config({"name": "ae", "out_dir": str(root / "ae"), "data": {"kind": "digits"},
                       "net": {"kind": "autoencoder", "latent_channels": 2, "base_channels": 8,
                               "channel_mults": [1, 2]},
                       "objective": {"kind": "autoencoder"}, "train": {"steps": 20, "batch_size": 32, **QUIET}})
    train_from_config(ae, log=None)
    ldm = parse_config({"name": "ldm", "out_dir": str(root / "ldm"), "autoencoder": str(root / "ae"),
                        "data": {"kind": "digits", "conditional": True},
                        "net": {"kind": "dit", "patch_size": 1, "hidden": 32, "depth": 1, "heads": 2},
                        "train": {"steps": 5, "batch_size": 32, **QUIET}, "sample": {"method": "ddim", "nfe": 4}})
    train_from_config(ldm, log=None)
    return root


def test_the_latent_data_has_unit_std_and_the_autoencoders_shape(runs):
    codec = load_codec(runs / "ae")
    data = build_data(parse_config({"data": {"kind": "digits"}}).data, 0)
    z = codec.encode(data.x)
    assert z.shape[1:] == codec.latent_shape == (2, 4, 4) and codec.image_shape == (1, 8, 8)
    assert z.std().item() == pytest.approx(1.0, abs=0.05)  # the scale was measured on 512 of these images
    assert codec.decode(z).shape == data.x.shape


def test_a_latent_run_samples_images_through_load_and_the_cli(runs, tmp_path):
    pipe = kuosan.load(runs / "ldm", device="cpu")
    assert pipe.data_shape == (2, 4, 4) and pipe.image_shape == (1, 8, 8)
    x = pipe.generate(6, labels=[1, 2], guidance=2.0, seed=0)
    assert x.shape == (6, 1, 8, 8) and torch.isfinite(x).all()
    assert torch.allclose(x, pipe.generate(6, labels=[1, 2], guidance=2.0, seed=0))
    out = tmp_path / "s.png"
    res = CliRunner().invoke(app, ["sample", str(runs / "ldm"), "--n", "2", "--class", "all", "--guidance", "2",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    f = np.load(out.with_suffix(".npz"))
    assert f["samples"].shape == (20, 1, 8, 8) and sorted(set(f["labels"].tolist())) == list(range(10))
    y = pipe.img2img(x, 0.5, seed=1)
    assert y.shape == x.shape


def test_eval_scores_decoded_images(runs, tmp_path):
    res = CliRunner().invoke(app, ["eval", str(runs / "ldm"), "--samplers", "ddim", "--nfe", "4", "--n", "50",
                                   "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    import json

    rows = json.loads((tmp_path / "ev" / "report.json").read_text())["results"]
    assert rows and rows[0]["nfe_used"] == 4 and np.isfinite(rows[0]["fd"])


def test_a_latent_checkpoint_without_its_autoencoder_names_the_file(runs, tmp_path):
    copy = tmp_path / "ldm"
    shutil.copytree(runs / "ldm", copy)
    latest = (copy / "checkpoints" / "latest").read_text().strip()
    (copy / "checkpoints" / latest / "autoencoder.safetensors").unlink()
    with pytest.raises(Exception, match="autoencoder.safetensors"):
        kuosan.load(copy, device="cpu")


def test_an_autoencoder_of_another_image_size_is_refused(runs, tmp_path):
    cfg = parse_config({"name": "x", "out_dir": str(tmp_path / "x"), "autoencoder": str(runs / "ae"),
                        "data": {"kind": "digits", "size": 16}, "train": {"steps": 1, **QUIET}})
    with pytest.raises(ValueError, match=r"encodes images of shape \(1, 8, 8\) but this run's data has shape "
                                         r"\(1, 16, 16\)"):
        train_from_config(cfg, log=None)
    cfg = parse_config({"name": "y", "out_dir": str(tmp_path / "y"), "autoencoder": str(runs / "ldm"),
                        "data": {"kind": "digits"}, "train": {"steps": 1, **QUIET}})
    with pytest.raises(ValueError, match="is not an autoencoder run"):
        train_from_config(cfg, log=None)


def test_the_autoencoder_stage_is_trained_first_when_none_is_given(tmp_path):
    ae_yaml = tmp_path / "tiny-vae.yaml"
    ae_yaml.write_text("name: tiny-vae\nnet: {kind: autoencoder, latent_channels: 2, base_channels: 8, "
                       "channel_mults: [1, 2]}\ndata: {kind: digits}\nobjective: {kind: autoencoder}\n"
                       "train: {steps: 4, batch_size: 16, sample_every: 0}\n")
    cfg = parse_config({"name": "ldm", "out_dir": str(tmp_path / "ldm"), "autoencoder_recipe": str(ae_yaml),
                        "data": {"kind": "digits"}, "net": {"kind": "dit", "patch_size": 1, "hidden": 32, "depth": 1,
                                                            "heads": 2},
                        "train": {"steps": 2, "batch_size": 16, **QUIET}})
    train_from_config(cfg, log=None)
    assert (tmp_path / "ldm" / "autoencoder" / "checkpoints" / "latest").is_file()
    saved = (tmp_path / "ldm" / "config.yaml").read_text()
    assert str(tmp_path / "ldm" / "autoencoder") in saved  # a resumed run finds the same autoencoder
    assert kuosan.load(tmp_path / "ldm", device="cpu").generate(2, nfe=3, method="ddim").shape == (2, 1, 8, 8)


def test_info_names_the_autoencoder(runs):
    res = CliRunner().invoke(app, ["info", str(runs / "ldm")])
    assert res.exit_code == 0, res.output
    assert "images (1, 8, 8) -> latents (2, 4, 4)" in res.output
