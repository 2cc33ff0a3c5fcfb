"""Run configs: strict validation with messages that name the file and the key, overrides, the registry."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from kuosan.cli import recipe_files, recipe_header
from kuosan.config import ConfigError, RunConfig, load_config, parse_config, save_config
from kuosan.processes import EDM, VE, VP, DiscreteVP, RectifiedFlow, SubVP
from kuosan.registry import build_denoiser, build_network, build_process, net_arguments

RECIPES = recipe_files()
BOOK_RECIPES = (
    "toy2d-ddpm toy2d-ncsn toy2d-sde-vp toy2d-sde-subvp toy2d-sde-ve toy2d-edm toy2d-rectified-flow "
    "digits-ddpm digits-ncsn digits-sde-vp digits-edm"
).split()


def write(tmp_path: Path, tree: dict, name: str = "run.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return p


# --- strictness: unknown keys and bad values name the file and the key -----------------------------------
@pytest.mark.parametrize(
    ("tree", "key"),
    [
        ({"train": {"stepz": 10}}, "train.stepz"),
        ({"colour": "red"}, "colour"),
        ({"process": {"kind": "ve", "beta_min": 0.1}}, "process.beta_min"),  # a VP key on a VE process
        ({"sample": {"method": "ddim", "eta": 0.0}}, "sample.eta"),
    ],
)
def test_unknown_key_names_file_and_key(tmp_path, tree, key):
    path = write(tmp_path, tree)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and f"unknown key {key!r}" in msg


def test_unknown_network_argument_is_rejected(tmp_path):
    path = write(tmp_path, {"net": {"kind": "mlp", "hiden": 64}})
    with pytest.raises(ConfigError, match=r"net.*unknown key 'hiden'.*hidden"):
        load_config(path)
    assert str(path) in str(pytest.raises(ConfigError, load_config, path).value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.steps=-5", "train.steps"),
        ("train.lr=0", "train.lr"),
        ("loss.weighting=sigma3", "loss.weighting"),
        ("process.kind=brownian", "process.kind"),
        ("train.ema_decay=1.5", "train.ema_decay"),
        ("prediction=noise", "prediction"),
        ("data.name=spiral", "data.name"),
        ("sample.method=dpm", "sample.method"),
    ],
)
def test_bad_value_names_key(tmp_path, override, key):
    path = write(tmp_path, {"name": "x"})
    with pytest.raises(ConfigError) as e:
        load_config(path, [override])
    assert str(path) in str(e.value) and f"{key}:" in str(e.value)


def test_edm_preconditioning_needs_x0_prediction():
    with pytest.raises(ConfigError, match="x0-predictor"):
        parse_config({"precondition": "edm", "prediction": "eps"})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: [1,\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


# --- overrides ------------------------------------------------------------------------------------------
def test_overrides_are_yaml_scalars(tmp_path):
    path = write(tmp_path, {"net": {"kind": "unet", "base_channels": 16}, "data": {"kind": "digits"}})
    cfg = load_config(path, ["train.lr=3e-4", "train.bf16=true", "net.channel_mults=[1, 2]", "name=abc",
                             "process.kind=ve", "process.sigma_max=20"])
    assert cfg.train.lr == 3e-4 and cfg.train.bf16 is True and cfg.name == "abc"
    assert cfg.net.kwargs == {"base_channels": 16, "channel_mults": [1, 2]}
    assert cfg.process.kind == "ve" and cfg.process.sigma_max == 20.0
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, ["train.steps"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(path, ["net.kind.x=1"])


def test_resolved_config_round_trips(tmp_path):
    cfg = parse_config({"process": {"kind": "edm"}, "precondition": "edm", "net": {"kind": "mlp", "hidden": 32}})
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert again.train.steps == RunConfig().train.steps  # every default is written out


# --- the registry builds exactly what the config names ------------------------------------------------
@pytest.mark.parametrize(
    ("tree", "cls", "attrs"),
    [
        ({"kind": "discretevp", "schedule": "linear", "n": 100, "beta_end": 0.05}, DiscreteVP, {"n": 100}),
        ({"kind": "vp", "beta_max": 10.0}, VP, {"beta_max": 10.0}),
        ({"kind": "subvp"}, SubVP, {"beta_min": 0.1}),
        ({"kind": "ve", "sigma_max": 7.0}, VE, {"sigma_max": 7.0}),
        ({"kind": "edm", "sigma_max": 40.0}, EDM, {"t_max": 40.0}),
        ({"kind": "rectified_flow", "t_min": 0.01}, RectifiedFlow, {"t_min": 0.01}),
    ],
)
def test_build_process(tree, cls, attrs):
    proc = build_process(parse_config({"process": tree}).process)
    assert type(proc) is cls
    for k, v in attrs.items():
        assert getattr(proc, k) == v


def test_discretevp_betas_reach_the_process():
    proc = build_process(parse_config({"process": {"kind": "discretevp", "n": 10, "beta_start": 0.01,
                                                   "beta_end": 0.1}}).process)
    assert torch.allclose(proc.betas, torch.linspace(0.01, 0.1, 10, dtype=torch.float64))
    # alpha-bar at the last training time is the product of (1 - beta) (book eq. 4.8)
    assert math.isclose(float(proc.alpha(torch.tensor(1.0, dtype=torch.float64))) ** 2,
                        float(torch.prod(1 - proc.betas)), rel_tol=1e-12)


def test_shapes_and_variance_are_filled_in():
    cfg = parse_config({"net": {"kind": "unet", "base_channels": 16, "channel_mults": [1, 2]},
                        "data": {"kind": "digits"}, "loss": {"kind": "hybrid"}})
    kw = net_arguments(cfg, (1, 8, 8), num_classes=10)
    assert kw["in_channels"] == 1 and kw["image_size"] == 8 and kw["learn_sigma"] and kw["num_classes"] == 10
    den = build_denoiser(cfg, build_network(cfg, (1, 8, 8)))
    assert den.learned_variance
    x = torch.randn(3, 1, 8, 8)
    assert den(x, torch.full((3,), 0.5, dtype=torch.float64)).shape == x.shape  # prediction half of 2C channels


# --- recipes --------------------------------------------------------------------------------------------
def test_every_book_model_has_a_recipe():
    assert set(BOOK_RECIPES) <= set(RECIPES)


@pytest.mark.parametrize("name", BOOK_RECIPES)
def test_recipe_validates_and_names_its_book_section(name):
    cfg = load_config(RECIPES[name])
    assert cfg.name == name
    assert recipe_header(RECIPES[name]).get("book", "").startswith("§4.")
    shape = (2,) if cfg.data.kind == "toy2d" else (1, 8, 8)
    den = build_denoiser(cfg, build_network(cfg, shape))
    x = torch.randn(2, *shape)
    t = torch.full((2,), 0.5 * (den.process.t_min + den.process.t_max), dtype=torch.float64)
    assert den.x0(x, t).shape == x.shape
