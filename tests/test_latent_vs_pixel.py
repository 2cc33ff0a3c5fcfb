"""benchmarks/latent_vs_pixel.py: the step count for a CPU budget, the equal-FD rule, the mnist-pixel recipe, and
(slow) the whole benchmark on a tiny latent run and a tiny pixel run of 28x28 MNIST."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kuosan.cli import recipe_files, recipe_header
from kuosan.config import load_config, parse_config
from kuosan.registry import build_network
from kuosan.train import train_from_config

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "latent_vs_pixel.py"
QUIET = {"threads": 1, "progress": False, "tensorboard": False, "sample_every": 0}


def bench():
    spec = importlib.util.spec_from_file_location("latent_vs_pixel", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_steps_for_a_budget_follow_the_line_through_both_timing_runs():
    # cost = 5 + 1.5 * steps: 2 steps 8 s, 30 steps 50 s -> (2425 - 5) / 1.5 = 1613.3 steps
    steps, per_step, startup = bench().steps_for(2425.0, 8.0, 50.0, 30)
    assert per_step == pytest.approx(1.5) and startup == pytest.approx(5.0) and steps == 1613
    with pytest.raises(ValueError, match="timing-steps"):
        bench().steps_for(100.0, 8.0, 7.0, 30)


def test_equal_fd_is_the_worse_best_and_each_models_cheapest_nfe_reaching_it():
    rows = {"latent": {5: {"fd": 30.0}, 10: {"fd": 12.0}, 20: {"fd": 11.0}},
            "pixel": {5: {"fd": 90.0}, 10: {"fd": 20.0}, 20: {"fd": 14.0}}}
    target, at = bench().equal_fd(rows)
    assert target == 14.0 and at == {"latent": 10, "pixel": 20}  # the latent model's FD 12 at 10 NFE is <= 14


def test_the_pixel_recipe_matches_the_latent_recipe_on_28x28_images():
    files = recipe_files()
    pix, ldm = load_config(files["mnist-pixel"]), load_config(files["mnist-ldm"])
    assert recipe_header(files["mnist-pixel"])["book"].startswith("§4.")
    assert (pix.process, pix.prediction, pix.data, pix.objective) == (ldm.process, ldm.prediction, ldm.data,
                                                                      ldm.objective)
    net = build_network(pix, (1, 28, 28), num_classes=10)
    x = torch.randn(2, 1, 28, 28)
    assert net(x, torch.full((2,), 0.5), torch.tensor([3, 10])).shape == x.shape  # 10: the null class


@pytest.mark.slow
def test_the_benchmark_prints_both_models_and_the_ratio(tmp_path):
    mnist = {"kind": "mnist", "conditional": True}
    ae = parse_config({"name": "ae", "out_dir": str(tmp_path / "ae"), "data": {"kind": "mnist"},
                       "net": {"kind": "autoencoder", "latent_channels": 2, "base_channels": 4,
                               "channel_mults": [1, 2, 2]},
                       "objective": {"kind": "autoencoder"}, "train": {"steps": 3, "batch_size": 8, **QUIET}})
    train_from_config(ae, log=None)
    small = {"kind": "unet", "base_channels": 8, "channel_mults": [1], "num_res_blocks": 1,
             "attention_resolutions": []}
    for name, extra in (("ldm", {"autoencoder": str(tmp_path / "ae")}), ("pix", {})):
        cfg = parse_config({"name": name, "out_dir": str(tmp_path / name), "data": mnist, "net": small,
                            "objective": {"kind": "denoising", "p_uncond": 0.1},
                            "train": {"steps": 2, "batch_size": 8, **QUIET}, **extra})
        train_from_config(cfg, log=None)
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "ldm"), str(tmp_path / "pix"),
                          "--latent-cpu", "1,2", "--pixel-cpu", "3", "--n", "20", "--nfe", "2,3", "--w", "1",
                          "--jobs", "2", "--cache", str(tmp_path / "cells.json")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "| latent | 3 s (1 + 2) | 1 | 3 |" in out and "| pixel | 3 s | 1 | 2 |" in out
    assert "speed-up (CPU)" in out and ("NOT met" in out or "| met |" in out)
    assert (tmp_path / "cells.json").exists()
