"""The `kuosan` command through typer's CliRunner: recipes, train, info, sample, demo, and its error messages."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from kuosan.cli import app
from kuosan.train import load_checkpoint

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def toy_yaml(tmp_path, **data):
    tree = {
        "name": "toy",
        "process": {"kind": "vp"},
        "net": {"kind": "mlp", "hidden": 32, "depth": 2},
        "data": {"kind": "toy2d", "name": "moons", "n": 512, **data},
        "train": {"steps": 6, "batch_size": 64, "ckpt_every": 3, "log_every": 2, "progress": False},
        "sample": {"method": "ddim", "nfe": 5, "n": 50},
    }
    p = tmp_path / "toy.yaml"
    p.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return p


def test_recipes_lists_every_book_model_with_its_section():
    res = invoke("recipes")
    assert res.exit_code == 0
    for name in ("toy2d-ddpm", "toy2d-ncsn", "toy2d-sde-vp", "toy2d-sde-subvp", "toy2d-sde-ve", "toy2d-edm",
                 "toy2d-rectified-flow", "digits-ddpm", "digits-ncsn", "digits-sde-vp", "digits-edm"):
        assert name in res.output
    assert "§4.1" in res.output and "§4.2" in res.output and "§4.3.3" in res.output


def test_train_info_sample(tmp_path):
    run_dir = tmp_path / "run"
    res = invoke("train", toy_yaml(tmp_path), "--out", run_dir, "--set", "train.lr=2e-3")
    assert res.exit_code == 0, res.output
    assert "trained to step 6" in res.output
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["train"]["lr"] == 2e-3 and "out_dir" not in resolved  # a copied run resumes in its new place
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 3  # log_every=2
    assert any((run_dir / "tb").iterdir())  # TensorBoard events

    res = invoke("info", run_dir)
    assert res.exit_code == 0
    n_params = sum(v.numel() for v in load_checkpoint(run_dir).weights.values())
    assert "step-00000006" in res.output and f"{n_params:,} parameters" in res.output and "mlp" in res.output
    assert "yes, 6 updates" in res.output  # the EMA

    res = invoke("sample", run_dir, "--method", "ddim", "--nfe", "4", "--n", "30", "--seed", "1",
                 "--out", tmp_path / "s.png")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s.png").stat().st_size > 0
    x = np.load(tmp_path / "s.npz")["samples"]
    assert x.shape == (30, 2) and np.isfinite(x).all()
    again = invoke("sample", run_dir, "--method", "ddim", "--nfe", "4", "--n", "30", "--seed", "1",
                   "--out", tmp_path / "t.png")
    assert again.exit_code == 0 and np.array_equal(np.load(tmp_path / "t.npz")["samples"], x)  # seeded


def test_resume_continues_a_run(tmp_path):
    cfg = toy_yaml(tmp_path)
    assert invoke("train", cfg, "--out", tmp_path / "r", "--set", "train.steps=3").exit_code == 0
    res = invoke("train", cfg, "--out", tmp_path / "r", "--resume")
    assert res.exit_code == 0 and "trained to step 6" in res.output
    res = invoke("train", cfg, "--out", tmp_path / "r")
    assert res.exit_code == 1 and "--resume" in res.output


def test_unknown_key_is_a_clear_error(tmp_path):
    cfg = toy_yaml(tmp_path)
    res = invoke("train", cfg, "--set", "train.stepz=5")
    assert res.exit_code == 1
    assert f"{cfg}: unknown key 'train.stepz'" in res.output
    res = invoke("train", "no-such-recipe")
    assert res.exit_code == 1 and "neither a config file nor a recipe" in res.output


def _image_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(folder / f"ok{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return folder


def test_corrupt_image_is_named_and_skip_bad_skips_it(tmp_path):
    folder = _image_folder(tmp_path)
    cfg = toy_yaml(tmp_path)
    common = ["--set", "net.kind=unet", "--set", "net={kind: unet, base_channels: 8, channel_mults: [1],"
              " num_res_blocks: 1, attention_resolutions: []}",
              "--set", f"data={{kind: folder, root: {folder}, size: 8, channels: 1}}", "--set", "train.batch_size=4",
              "--set", "train.steps=2"]
    res = invoke("train", cfg, "--out", tmp_path / "a", *common)
    assert res.exit_code == 1
    assert str(folder / "broken.png") in res.output and "--skip-bad" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) <= 8  # a message
    res = invoke("train", cfg, "--out", tmp_path / "b", "--skip-bad", *common)
    assert res.exit_code == 0, res.output
    assert "broken.png" in res.output  # the data summary names it
    listed = (tmp_path / "b" / "skipped_files.txt").read_text()
    assert str(folder / "broken.png") in listed and len(listed.strip().splitlines()) == 1
    assert load_checkpoint(tmp_path / "b").state["skipped_files"] == listed.strip().splitlines()


def test_demo_writes_a_grid_and_the_raw_samples(tmp_path):
    out = tmp_path / "demo"
    res = invoke("demo", "--out", out, "--set", "train.steps=2", "--set", "sample.n=8")
    assert res.exit_code == 0, res.output
    assert (out / "samples.png").stat().st_size > 0
    x = np.load(out / "samples.npz")["samples"]
    assert x.shape == (8, 1, 8, 8)
    assert f"samples: {out / 'samples.png'}" in res.output
    res = invoke("demo", "--out", out, "--set", "train.steps=2", "--set", "sample.n=8")
    assert "already trained" in res.output  # a second run only samples


def test_the_wheel_ships_the_recipes_and_the_feature_net(tmp_path):
    """A non-editable install finds its recipes: they and the digits feature weights are package data."""
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    from kuosan.cli import recipe_files

    pytest.importorskip("setuptools")
    root, src = Path(__file__).resolve().parents[1], tmp_path / "src"  # build a copy: no build/ in the checkout
    shutil.copytree(root / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
           str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("kuosan-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"kuosan/configs/{name}.yaml" for name in recipe_files()} <= names
    assert len(recipe_files()) >= 11 and "kuosan/assets/digits_features.safetensors" in names
