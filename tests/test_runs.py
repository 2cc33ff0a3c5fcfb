"""A run as a user meets it: the folder recipe, resuming from the run's own config, moved runs, sampling
options, and one-line errors that name the file or key."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import kuosan
from kuosan.cli import app

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def toy_yaml(tmp_path, steps=6):
    tree = {"name": "toy", "process": {"kind": "vp"}, "net": {"kind": "mlp", "hidden": 16, "depth": 1},
            "data": {"kind": "toy2d", "name": "moons", "n": 256},
            "train": {"steps": steps, "batch_size": 32, "ckpt_every": 2, "log_every": 1, "progress": False,
                      "tensorboard": False},
            "sample": {"method": "ddim", "nfe": 4, "n": 20}}
    p = tmp_path / "toy.yaml"
    p.write_text(yaml.safe_dump(tree))
    return p


def grey_folder(root, n_per_class=6, size=8, classes=("a", "b", "c")):
    """Class sub-folders of small grey PNGs: class k is a bright square in corner k."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            a = rng.integers(0, 40, (size, size)).astype(np.uint8)
            r, c = divmod(k, 2)
            a[r * size // 2 : (r + 1) * size // 2, c * size // 2 : (c + 1) * size // 2] = 230
            Image.fromarray(a, mode="L").save(root / name / f"{i}.png")
    return root


FOLDER_SMALL = ["--set", "net.base_channels=8", "--set", "train.batch_size=6", "--set", "train.steps=3",
                "--set", "train.ckpt_every=0", "--set", "train.sample_every=0", "--set", "train.progress=false",
                "--set", "train.tensorboard=false", "--set", "sample.n=6", "--set", "sample.nfe=4"]


# --- the folder recipe ---------------------------------------------------------------------------------
def test_folder_recipe_reads_size_grey_and_classes_from_the_files(tmp_path):
    root = grey_folder(tmp_path / "imgs")
    res = invoke("train", "folder", "--set", f"data.root={root}", "--out", tmp_path / "run", *FOLDER_SMALL)
    assert res.exit_code == 0, res.output
    assert "18 image files found" in res.output and "classes: 3" in res.output  # the data summary
    pipe = kuosan.load(tmp_path / "run", device="cpu")
    assert pipe.data_shape == (1, 8, 8) and pipe.num_classes == 3 and pipe.class_names == ("a", "b", "c")
    assert pipe.config.sample.clip_x0 == "auto" and pipe.model().clip_x0 is not None  # images: x0 clipped
    # sampling with classes and guidance writes one row per class and the labels beside the samples
    png = tmp_path / "s.png"
    res = invoke("sample", tmp_path / "run", "--class", "all", "--n", "2", "--guidance", "2", "--out", png)
    assert res.exit_code == 0, res.output
    z = np.load(png.with_suffix(".npz"))
    assert z["samples"].shape == (6, 1, 8, 8) and z["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    assert np.isfinite(z["samples"]).all() and np.abs(z["samples"]).max() <= 1.0 + 1e-6


def test_folder_without_root_says_how_to_give_it(tmp_path):
    res = invoke("train", "folder", "--out", tmp_path / "run")
    assert res.exit_code == 1 and "--set data.root=DIR" in res.output


def test_switching_the_data_kind_names_the_keys_the_new_kind_takes(tmp_path):
    res = invoke("train", "digits-ddpm", "--set", "data.kind=folder", "--set", "data.root=x", "--out", tmp_path / "r")
    assert res.exit_code == 1
    assert "unknown key 'data.split'" in res.output and "takes root, size, channels" in res.output
    assert "--set 'data={kind: folder, ...}'" in res.output


def test_folder_held_out_images_are_not_trained_on_and_eval_uses_them(tmp_path):
    from kuosan.config import parse_config
    from kuosan.eval.evaluate import build_reference
    from kuosan.registry import build_data

    root = grey_folder(tmp_path / "imgs", n_per_class=10)
    cfg = parse_config({"data": {"kind": "folder", "root": str(root), "heldout": 0.2}, "net": {"kind": "unet"}})
    ds = build_data(cfg.data)
    assert len(ds.x) == 24 and len(ds.heldout) == 6 and sorted(ds.heldout_labels.tolist()) == [0, 0, 1, 1, 2, 2]
    train_rows = {tuple(r.flatten().tolist()) for r in ds.x}
    assert not any(tuple(r.flatten().tolist()) in train_rows for r in ds.heldout)
    ref = build_reference(cfg, ds.shape)
    assert len(ref.train) == 24 and len(ref.heldout) == 6 and ref.note == ""
    assert build_data(cfg.data, seed=7).heldout.equal(ds.heldout)  # the split does not move with train.seed


# --- resuming a run from its own config ------------------------------------------------------------------
def test_resume_uses_the_saved_config_and_a_moved_run_resumes_in_place(tmp_path):
    cfg = toy_yaml(tmp_path, steps=4)
    assert invoke("train", cfg, "--out", tmp_path / "a").exit_code == 0
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert "out_dir" not in saved and "out_dir" not in json.loads(
        (tmp_path / "a" / "checkpoints" / "step-00000004" / "state.json").read_text())["config"]
    shutil.move(tmp_path / "a", tmp_path / "moved")
    res = invoke("train", "--resume", "--out", tmp_path / "moved", "--set", "train.steps=6")
    assert res.exit_code == 0, res.output
    assert "trained to step 6" in res.output and not (tmp_path / "a").exists()
    assert kuosan.load(tmp_path / "moved", device="cpu").step == 6
    res = invoke("resume", tmp_path / "moved", "--set", "train.steps=8")
    assert res.exit_code == 0 and "trained to step 8" in res.output
    steps = [json.loads(line)["step"] for line in (tmp_path / "moved" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_resume_refuses_to_change_what_the_run_was_trained_on(tmp_path):
    cfg = toy_yaml(tmp_path, steps=2)
    assert invoke("train", cfg, "--out", tmp_path / "a").exit_code == 0
    res = invoke("train", "--resume", "--out", tmp_path / "a", "--set", "data.name=swiss_roll")
    assert res.exit_code == 1 and "--set data.name" in res.output and "train.steps" in res.output
    other = tmp_path / "other.yaml"
    tree = yaml.safe_load(cfg.read_text())
    tree["data"]["name"] = "swiss_roll"
    other.write_text(yaml.safe_dump(tree))
    res = invoke("train", other, "--resume", "--out", tmp_path / "a")
    assert res.exit_code == 1 and "data.name" in res.output
    res = invoke("train", "--resume", "--out", tmp_path / "nothing")
    assert res.exit_code == 1 and "holds no config.yaml" in res.output


def test_metrics_hold_each_step_once_after_a_resume_from_an_earlier_checkpoint(tmp_path):
    cfg = toy_yaml(tmp_path, steps=6)
    assert invoke("train", cfg, "--out", tmp_path / "a").exit_code == 0
    ckpts = tmp_path / "a" / "checkpoints"
    (ckpts / "latest").write_text("step-00000004\n")  # as if killed after step 6 was logged but not saved
    shutil.rmtree(ckpts / "step-00000006")
    assert invoke("train", "--resume", "--out", tmp_path / "a").exit_code == 0
    steps = [json.loads(line)["step"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


# --- errors that name the file ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["weights.safetensors", "ema.safetensors", "state.json"])
def test_a_truncated_checkpoint_file_is_one_line_naming_it_and_the_previous_checkpoint(tmp_path, name):
    cfg = toy_yaml(tmp_path, steps=4)
    assert invoke("train", cfg, "--out", tmp_path / "a").exit_code == 0
    f = tmp_path / "a" / "checkpoints" / "step-00000004" / name
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    for cmd in (["sample", tmp_path / "a"], ["info", tmp_path / "a"], ["train", "--resume", "--out", tmp_path / "a"]):
        res = invoke(*cmd)
        assert res.exit_code == 1, cmd
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and str(f) in lines[0] and "step-00000002" in lines[0], res.output
    # the previous checkpoint named in the message works
    previous = tmp_path / "a" / "checkpoints" / "step-00000002"
    assert invoke("sample", previous, "--out", tmp_path / "p.png").exit_code == 0


def test_saved_files_are_readable_by_others_like_any_file(tmp_path):
    import os
    import stat

    cfg = toy_yaml(tmp_path, steps=2)
    assert invoke("train", cfg, "--out", tmp_path / "a").exit_code == 0
    d = tmp_path / "a" / "checkpoints" / "step-00000002"
    modes = {f.name: stat.S_IMODE(os.stat(f).st_mode) for f in d.iterdir()}
    assert len(set(modes.values())) == 1, modes


# --- sampling options ------------------------------------------------------------------------------------
def test_sample_refuses_n_zero_and_takes_sampler_specs_with_options(tmp_path):
    cfg = toy_yaml(tmp_path, steps=2)
    assert invoke("train", cfg, "--out", tmp_path / "a").exit_code == 0
    res = invoke("sample", tmp_path / "a", "--n", "0")
    assert res.exit_code == 1 and "--n must be at least 1" in res.output
    res = invoke("sample", tmp_path / "a", "--method", "ddim:eta=1.0", "--nfe", "4", "--n", "8",
                 "--out", tmp_path / "s.png")
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "s.npz")["samples"].shape == (8, 2)
    res = invoke("sample", tmp_path / "a", "--class", "all")
    assert res.exit_code == 1 and "class-conditional" in res.output


def test_info_names_the_objective(tmp_path):
    cfg = toy_yaml(tmp_path, steps=2)
    assert invoke("train", cfg, "--out", tmp_path / "a").exit_code == 0
    res = invoke("info", tmp_path / "a")
    assert res.exit_code == 0 and "objective:        denoising" in res.output


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, kuosan.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_runs_from_before_automatic_unet_groups_load_with_the_groups_they_were_trained_with():
    from kuosan.pipeline import _net_kwargs

    old = {"net": {"kind": "unet", "in_channels": 1, "image_size": 8, "channel_mults": [1, 2],
                   "attention_resolutions": [4]}}
    assert _net_kwargs(old)["groups"] == 32
    new = {**old, "net_defaults": {"groups": "auto"}}
    assert "groups" not in _net_kwargs(new)
    assert _net_kwargs({"net": {"kind": "mlp", "dim": 2}}) == {"kind": "mlp", "dim": 2}


def test_grey_28x28_images_are_scored_with_the_shipped_mnist_features(tmp_path):
    from kuosan.config import parse_config
    from kuosan.eval.evaluate import build_reference
    from kuosan.eval.features import mnist_features

    cfg = parse_config({"data": {"kind": "mnist"}, "net": {"kind": "unet"}})
    ref = build_reference(cfg, (1, 28, 28))
    assert ref.features_name.startswith("MNIST classifier") and "98.8% held-out" in ref.features_name
    assert len(ref.train) == 4500 and len(ref.heldout) == 500 and ref.note == ""
    assert torch.equal(ref.embed(ref.heldout[:4]), mnist_features(ref.heldout[:4]))


def test_clip_x0_settings_are_the_papers_rules():
    from kuosan.pipeline import x0_clipper

    x0 = torch.linspace(-3, 3, 2 * 1 * 4 * 100).reshape(2, 1, 4, 100)  # per sample 800 values in [-3, 3]
    torch.testing.assert_close(x0_clipper("clip")(x0), x0.clamp(-1, 1))
    s = torch.quantile(x0.reshape(2, -1).abs(), 0.995, dim=1).clamp(min=1)[:, None, None, None]
    dynamic = x0_clipper("dynamic")(x0)
    torch.testing.assert_close(dynamic, torch.maximum(torch.minimum(x0, s), -s) / s)  # Imagen: divide by s > 1
    assert not torch.allclose(dynamic, x0.clamp(-1, 1)) and dynamic.abs().max() <= 1
    inside = x0 / 3.5
    torch.testing.assert_close(x0_clipper("dynamic")(inside), inside)  # s = 1 inside the range: unchanged
    assert x0_clipper("none") is None and x0_clipper("auto", None) is None and x0_clipper("auto") is not None
    with pytest.raises(ValueError, match="clip_x0 must be one of"):
        x0_clipper("sometimes")


def test_previews_come_every_sample_every_steps_and_at_the_last(tmp_path):
    cfg = toy_yaml(tmp_path, steps=5)
    res = invoke("train", cfg, "--out", tmp_path / "a", "--set", "train.sample_every=2")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "a" / "samples").iterdir()) == [
        "step-00000002.png", "step-00000004.png", "step-00000005.png"]
    assert invoke("train", "--resume", "--out", tmp_path / "a").exit_code == 0  # nothing to do: no new picture
    assert len(list((tmp_path / "a" / "samples").iterdir())) == 3
