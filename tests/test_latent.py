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
from kuosan.latent import latent_known, load_codec
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
    unet = parse_config({"name": "ldm-unet", "out_dir": str(root / "ldm-unet"), "autoencoder": str(root / "ae"),
                         "data": {"kind": "digits", "conditional": True},
                         "net": {"kind": "unet", "base_channels": 8, "channel_mults": [1], "num_res_blocks": 1,
                                 "attention_resolutions": []},
                         "train": {"steps": 3, "batch_size": 32, **QUIET}, "sample": {"method": "ddim", "nfe": 4}})
    train_from_config(unet, log=None)
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
    pixel = parse_config({"name": "px", "out_dir": str(tmp_path / "px"), "data": {"kind": "digits"},
                          "net": {"kind": "dit", "patch_size": 2, "hidden": 16, "depth": 1, "heads": 2},
                          "train": {"steps": 1, "batch_size": 8, **QUIET}})
    train_from_config(pixel, log=None)
    cfg = parse_config({"name": "y", "out_dir": str(tmp_path / "y"), "autoencoder": str(tmp_path / "px"),
                        "data": {"kind": "digits"}, "train": {"steps": 1, **QUIET}})
    with pytest.raises(ValueError, match="is not an autoencoder run"):
        train_from_config(cfg, log=None)


def test_a_latent_run_named_as_autoencoder_lends_its_own(runs):
    carried, original = load_codec(runs / "ldm"), load_codec(runs / "ae")
    assert carried.scale == original.scale
    for (k, a), (_, b) in zip(carried.ae.state_dict().items(), original.ae.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


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


def test_latent_known_cells_are_those_whose_whole_block_is_known():
    known = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    known[0, 0, 5, 2] = False  # one unknown pixel: its 2x2 block's cell (2, 1) is to be filled
    known[0, 0, :, 7] = False  # the last column: cells (:, 3)
    cells = latent_known(known, (2, 4, 4))
    want = torch.ones(4, 4, dtype=torch.bool)
    want[2, 1] = False
    want[:, 3] = False
    assert cells.shape == (1, 2, 4, 4) and torch.equal(cells[0, 0], want) and torch.equal(cells[0, 1], want)
    with pytest.raises(ValueError, match="does not tile the latents"):
        latent_known(torch.ones(1, 1, 9, 9, dtype=torch.bool), (2, 4, 4))


def test_latent_inpainting_holds_the_known_cells_and_pastes_the_known_pixels(runs, monkeypatch, tmp_path):
    import kuosan.edit

    pipe = kuosan.load(runs / "ldm", device="cpu")
    images = build_data(parse_config({"data": {"kind": "digits"}}).data, 0).x[:3]
    mask = torch.zeros(8, 8)
    mask[:3] = 1  # the top three pixel rows known: latent row 0 (pixel rows 0-1) known, row 1 (2-3) filled
    seen = {}
    real = kuosan.edit.inpaint

    def spy(den, x, known, **kw):
        seen["x"], seen["known"] = x, known
        return real(den, x, known, **kw)

    monkeypatch.setattr(kuosan.edit, "inpaint", spy)
    out = pipe.inpaint(images, mask, method="ddim", nfe=4, labels=[1, 2, 3], guidance=2.0)
    assert out.shape == images.shape and torch.isfinite(out).all()
    assert torch.equal(out[:, :, :3], images[:, :, :3])  # known pixels exactly the input's
    assert not torch.allclose(out[:, :, 3:], images[:, :, 3:], atol=1e-3)
    assert torch.allclose(seen["x"], pipe.codec.encode(images))  # the sampler sees the input's latents ...
    assert seen["known"][:, :, 0].all() and not seen["known"][:, :, 1:].any()  # ... held on latent row 0 only
    np.save(tmp_path / "in.npy", images.numpy())
    res = CliRunner().invoke(app, ["edit", str(runs / "ldm"), "--inpaint", str(tmp_path / "in.npy"), "--mask",
                                   "top-half", "--out", str(tmp_path / "e.png"), "--nfe", "4", "--method", "ddim"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("method", ["lcm", "progressive"])
def test_a_student_of_a_latent_teacher_learns_and_decodes_in_its_latent_space(runs, tmp_path, method):
    from kuosan.distill import distill_config

    teacher = runs / ("ldm-unet" if method == "lcm" else "ldm")
    cfg = distill_config(method, teacher, ["train.steps=3", "train.batch_size=16", "train.threads=1",
                                           "train.progress=false", "train.tensorboard=false"],
                         out_dir=tmp_path / method)
    assert cfg.autoencoder == teacher.resolve() and cfg.autoencoder_recipe is None
    train_from_config(cfg, log=None)
    assert not (tmp_path / method / "autoencoder").exists()  # no second autoencoder was trained
    student, ref = kuosan.load(tmp_path / method, device="cpu"), kuosan.load(teacher, device="cpu")
    assert student.data_shape == ref.data_shape == (2, 4, 4) and student.image_shape == (1, 8, 8)
    for (k, a), (_, b) in zip(student.codec.ae.state_dict().items(), ref.codec.ae.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x = student.generate(4, labels=[0, 1, 2, 3], guidance=2.0, seed=0)
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()


def test_a_lora_adapter_of_a_latent_run_learns_in_its_latent_space(runs, tmp_path):
    from kuosan.train.finetune import finetune_config

    cfg = finetune_config(runs / "ldm-unet", 2, overrides=["train.steps=2", "train.batch_size=16", "train.threads=1",
                                                           "train.progress=false", "train.tensorboard=false"],
                          out_dir=tmp_path / "lora")
    assert cfg.autoencoder == (runs / "ldm-unet").resolve() and cfg.autoencoder_recipe is None
    train_from_config(cfg, log=None)
    pipe = kuosan.load(tmp_path / "lora", device="cpu")
    assert pipe.codec is not None and pipe.data_shape == (2, 4, 4)
    assert pipe.generate(3, labels=[1, 2, 3], nfe=3, method="ddim").shape == (3, 1, 8, 8)


def test_controlnet_on_a_latent_run_is_refused_by_name(runs, tmp_path):
    cfg = parse_config({"name": "c", "out_dir": str(tmp_path / "c"), "base": str(runs / "ldm-unet"),
                        "data": {"kind": "digits"}, "objective": {"kind": "control"},
                        "train": {"steps": 1, **QUIET}})
    with pytest.raises(ValueError, match="is a latent run: ControlNet on latent runs is not built"):
        train_from_config(cfg, log=None)


def test_a_latent_run_clips_x0_to_its_training_latents_range(runs, tmp_path):
    codec = load_codec(runs / "ae")
    z = codec.encode(build_data(parse_config({"data": {"kind": "digits", "conditional": True}}).data, 0).x)
    want = z.abs().amax(dim=(0, 2, 3))
    pipe = kuosan.load(runs / "ldm", device="cpu")
    assert torch.allclose(torch.tensor(pipe.codec.bound), want)  # recorded at training: max |z| per channel
    big = torch.full((1, 2, 4, 4), 100.0)
    assert torch.allclose(pipe.model().clip_x0(big), want.view(1, 2, 1, 1).expand_as(big))
    assert torch.allclose(pipe.model().clip_x0(-big), -want.view(1, 2, 1, 1).expand_as(big))
    assert pipe.model(clip_x0="none").clip_x0 is None
    with pytest.raises(ValueError, match="'dynamic'"):
        pipe.model(clip_x0="dynamic")
    copy = tmp_path / "old"  # a run trained before the bound was recorded: loading derives it from its data
    shutil.copytree(runs / "ldm", copy)
    latest = (copy / "checkpoints" / "latest").read_text().strip()
    state_path = copy / "checkpoints" / latest / "state.json"
    import json

    state = json.loads(state_path.read_text())
    del state["autoencoder"]["bound"]
    state_path.write_text(json.dumps(state))
    assert torch.allclose(torch.tensor(kuosan.load(copy, device="cpu").codec.bound), want)
