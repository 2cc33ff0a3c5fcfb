"""kuosan.samplers.resolve: other tools' sampler names as kuosan methods, grids and options.

Every table entry runs through kuosan.sample on an exact Gaussian-mixture model; entries that claim to be the
same sampler as diffusers' are run against diffusers' own scheduler loop (installed in .venv) from the same x_T
on the same exact model; the CLI takes a foreign name; the docs table is the generated one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import F64, mixture_2d

import kuosan
from kuosan.eval.evaluate import parse_sampler
from kuosan.processes import DiscreteVP
from kuosan.samplers import METHODS, NoEquivalent, Resolved, resolve
from kuosan.samplers import names as N
from kuosan.samplers.diffusers_names import DIFFUSERS_CLASSES, TABLE_CONFIGS

pytestmark = pytest.mark.usefixtures("one_thread")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "samplers.md"


def _every_resolution() -> list[tuple[str, Resolved]]:
    out = []
    for e in N._ENTRIES:
        if e.method is not None:
            out.append((f"{e.tool}:{e.name}", N._apply(e, None, e.name)))
    for _, label, name in N._TABLE_PAIRS:
        try:
            out.append((label, resolve(name)))
        except NoEquivalent:
            pass
    for label, cls, cfg in TABLE_CONFIGS:
        if DIFFUSERS_CLASSES[cls][0] is not None:
            out.append((label, resolve(cls, config=cfg)))
    return out


RESOLVED = _every_resolution()


@pytest.mark.parametrize("label,r", RESOLVED, ids=[label for label, _ in RESOLVED])
def test_every_entry_runs_in_kuosan_sample(label, r):
    """A registered method, a grid of the process, options kuosan.sample accepts: a finite sample within nfe."""
    assert r.method in METHODS
    proc = DiscreteVP.scaled_linear()
    den = mixture_2d().denoiser(proc, "eps")
    x_T = proc.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    den.reset_nfe()
    x = kuosan.sample(den, x_T, r.method, nfe=9, grid=r.grid, generator=torch.Generator().manual_seed(1),
                      **r.options)
    assert torch.isfinite(x).all() and den.nfe <= 9
    assert parse_sampler(r.spec) == (r.method, {**({"grid": r.grid} if r.grid else {}), **r.options})


def test_names_match_loosely_and_pick_the_tool_the_spelling_implies():
    assert resolve("DPM++ 2M Karras") == resolve("dpm++_2m-karras") == Resolved("dpmpp-2m", "karras", {}, True,
                                                                                 resolve("DPM++ 2M").note)
    assert resolve("dpmpp_2m/karras").spec == resolve("dpmpp_2m", scheduler="Karras").spec == "dpmpp-2m:grid=karras"
    assert resolve("sample_dpmpp_2m/exponential").spec == "dpmpp-2m:grid=logsnr"
    assert resolve("Euler a").spec == "ddim:grid=uniform:eta=1.0"
    assert resolve("DPM2").exact is False and resolve("dpm_2").exact is False  # A1111's drops a sigma; uniform
    assert "drops the next-to-last" in resolve("DPM2").note and "drops" not in resolve("dpm_2").note
    assert resolve("ddim").method == "euler" and resolve("DDIM").method == "ddim"  # ComfyUI's ddim is Euler
    assert resolve("DPM fast Karras").grid == "logsnr"  # dpm_fast draws its own grid
    r = resolve("DPMSolverMultistepScheduler(use_karras_sigmas=true; algorithm_type=sde-dpmsolver++)")
    assert (r.method, r.grid, r.exact) == ("dpmpp-2m-sde", "karras", False)
    assert resolve("DDIMScheduler", config={"clip_sample": False, "eta": 0.5}).spec == "ddim:grid=leading:eta=0.5"


def test_unknown_and_unmatched_names_say_so_with_suggestions():
    with pytest.raises(ValueError, match=r"unknown sampler name 'dpmpp 2m krras'.*did you mean 'dpmpp_2m'"):
        resolve("dpmpp 2m krras")
    with pytest.raises(NoEquivalent, match=r"'LMS' .*no kuosan equivalent; closest kuosan methods: eabm, dpmpp-3m"):
        resolve("LMS")
    with pytest.raises(NoEquivalent, match=r"closest kuosan methods: eabm, dpmpp-3m"):
        resolve("LMSDiscreteScheduler")
    with pytest.raises(NoEquivalent, match=r"schedule 'beta' .*no kuosan grid"):
        resolve("dpmpp_2m/beta")
    with pytest.raises(ValueError, match=r"DDIMScheduler: unknown config key\(s\) \['clip_smaple'\]"):
        resolve("DDIMScheduler", config={"clip_smaple": False})
    with pytest.raises(NoEquivalent, match="closest kuosan methods: eabm, dpmpp-3m"):
        parse_sampler("LMS")
    assert parse_sampler("ddim:eta=1.0") == ("ddim", {"eta": 1.0})  # kuosan's own names are untouched
    assert parse_sampler("DPM++ 2M Karras") == ("dpmpp-2m", {"grid": "karras"})
    assert parse_sampler("Euler a:eta=0.5:grid=logsnr") == ("ddim", {"grid": "logsnr", "eta": 0.5})


def test_uniform_schedule_noise_levels_differ_as_the_note_says():
    """k-diffusion's schedule uniform in the training index interpolates log sigma; kuosan's DiscreteVP log
    alpha: at the grid points of nfe <= 100 the noise levels differ by <= 0.05% (SD) / 0.12% (DDPM linear)."""
    for proc, bound in ((DiscreteVP.scaled_linear(), 5.1e-4), (DiscreteVP.linear(), 1.2e-3)):
        log_s = 0.5 * torch.log((1 - proc.alphas_cumprod) / proc.alphas_cumprod)
        worst = 0.0
        for n in range(2, 101):
            idx = torch.linspace(proc.n - 1, 0, n, dtype=F64)
            i0 = idx.floor().long().clamp(max=proc.n - 2)
            f = idx - i0
            theirs = torch.exp(log_s[i0] * (1 - f) + log_s[i0 + 1] * f)
            ts = proc.timesteps(n - 1, "uniform")
            ours = proc.sigma(ts) / proc.alpha(ts)
            worst = max(worst, ((ours - theirs).abs() / theirs).max().item())
        assert 1e-5 < worst < bound  # not equal (hence "nearest"), but close


# --- against diffusers' scheduler loops -----------------------------------------------------------------------
diffusers = pytest.importorskip("diffusers")
SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def _diffusers_loop(scheduler, proc, x_T: torch.Tensor, steps: int, at: str) -> torch.Tensor:
    """diffusers' sampling loop with the exact mixture's eps as the network. at="timestep": the network sees
    diffusers' (integer) timestep, as a trained network would; at="sigma": the noise level the step assumes."""
    gm = mixture_2d()
    scheduler.set_timesteps(steps)
    sigmas = getattr(scheduler, "sigmas", None)
    ve = type(scheduler).__name__.startswith("Euler")  # k-diffusion-style state x / alpha
    x = x_T.float() * (float(sigmas[0] ** 2 + 1) ** 0.5 if ve else 1.0)
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(x, t)
        if at == "sigma":
            s = float(sigmas[i])
            tk = proc.t_of_log_snr(torch.tensor(-math.log(s), dtype=F64))
        else:
            tk = proc.t_of_index(int(t))
        eps = gm.eps(x_in.double(), tk, proc).float()
        x = scheduler.step(eps, t, x).prev_sample
    return x.double()


def _kuosan(name: str, proc, x_T, nfe: int, config=None) -> torch.Tensor:
    r = resolve(name, config=config)
    return kuosan.sample(mixture_2d().denoiser(proc, "eps"), x_T, r.method, nfe=nfe, grid=r.grid, **r.options)


@pytest.fixture(scope="module")
def sd():
    proc = DiscreteVP.scaled_linear()
    return proc, proc.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=F64)


@pytest.mark.parametrize("steps", [5, 10, 25])
def test_exact_entries_equal_diffusers(sd, steps):
    """DDIMScheduler(clip_sample=False), DPMSolverMultistepScheduler(timestep_spacing=trailing) (integer
    timesteps) and EulerDiscreteScheduler(use_karras_sigmas=True) claim exact: equal to float32 rounding."""
    proc, x_T = sd
    cases = [("DDIMScheduler", {"clip_sample": False}, diffusers.DDIMScheduler, "timestep"),
             ("DPMSolverMultistepScheduler", {"timestep_spacing": "trailing"}, diffusers.DPMSolverMultistepScheduler,
              "timestep"),
             ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, diffusers.EulerDiscreteScheduler, "sigma")]
    for name, cfg, cls, at in cases:
        assert resolve(name, config=cfg).exact
        theirs = _diffusers_loop(cls(**SD_BETAS, **cfg), proc, x_T, steps, at)
        ours = _kuosan(name, proc, x_T, steps, cfg)
        gap = (ours - theirs).abs().max().item()
        assert gap < 2e-4, (name, steps, gap)


@pytest.mark.parametrize("steps", [6, 12])
def test_dpmpp_2m_karras_update_equals_diffusers_but_rounded_timesteps_do_not(sd, steps):
    """"DPM++ 2M Karras" (k-diffusion: the network sees the step's own noise level) is exact: diffusers'
    DPMSolverMultistep update on the same Karras sigmas agrees when the model is evaluated at those sigmas.
    Fed diffusers' rounded integer timesteps, as a network would be, the result moves 10x further: the
    diffusers entry is therefore "nearest"."""
    proc, x_T = sd
    cfg = {"use_karras_sigmas": True}
    ours = _kuosan("DPM++ 2M Karras", proc, x_T, steps)
    assert resolve("DPM++ 2M Karras").exact and not resolve("DPMSolverMultistepScheduler", config=cfg).exact
    same_sigma = _diffusers_loop(diffusers.DPMSolverMultistepScheduler(**SD_BETAS, **cfg), proc, x_T, steps, "sigma")
    rounded = _diffusers_loop(diffusers.DPMSolverMultistepScheduler(**SD_BETAS, **cfg), proc, x_T, steps, "timestep")
    gap, gap_rounded = ((ours - same_sigma).abs().max().item(), (ours - rounded).abs().max().item())
    assert gap < 2e-4 and gap_rounded > 10 * gap, (gap, gap_rounded)


# --- CLI and docs ---------------------------------------------------------------------------------------------
def test_cli_sample_takes_another_tools_name(tmp_path):
    from test_cli import invoke, toy_yaml

    run = tmp_path / "run"
    assert invoke("train", toy_yaml(tmp_path), "--out", run, "--set", "train.steps=3").exit_code == 0
    res = invoke("sample", run, "--method", "DPM++ 2M Karras", "--nfe", "6", "--n", "8", "--out", tmp_path / "a.png")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a.npz").exists() and "runs as dpmpp-2m:grid=karras (the same sampler)" in res.output
    for spec, out in (("dpmpp-2m:grid=karras", "k.png"), ("dpmpp-2m", "d.png")):  # the grid reaches the sampler
        assert invoke("sample", run, "--method", spec, "--nfe", "6", "--n", "8", "--out", tmp_path / out).exit_code == 0
    x = {k: np.load(tmp_path / f"{k}.npz")["samples"] for k in "akd"}
    assert np.array_equal(x["a"], x["k"]) and not np.allclose(x["a"], x["d"])
    res = invoke("sample", run, "--method", "dpmpp_2m_sde_gpu/karras", "--nfe", "6", "--n", "8",
                 "--out", tmp_path / "b.png")
    assert res.exit_code == 0 and "runs as dpmpp-2m-sde:grid=karras (the nearest kuosan sampler)" in res.output
    res = invoke("sample", run, "--method", "LMS", "--nfe", "6", "--out", tmp_path / "c.png")
    assert res.exit_code != 0 and "closest kuosan methods: eabm, dpmpp-3m" in res.output


def test_eval_sweeps_a_foreign_name_and_skips_one_without_equivalent(tmp_path):
    from kuosan.config import parse_config
    from kuosan.data.toy2d import toy_gmm
    from kuosan.eval.evaluate import build_reference
    from kuosan.eval.report import evaluate

    ref = build_reference(parse_config({"data": {"kind": "toy2d", "name": "gmm"}}), (2,))
    report = evaluate(toy_gmm().denoiser(DiscreteVP.linear(1000)), ref, (2,), tmp_path,
                      samplers=["DPM++ 2M Karras", "LMS"], nfes=[6], n=200, log=lambda s: None)
    assert [r["sampler"] for r in report["results"]] == ["DPM++ 2M Karras"]
    (skip,) = report["skipped"]
    assert skip["sampler"] == "LMS" and "closest kuosan methods: eabm, dpmpp-3m" in skip["reason"]


def test_docs_table_is_the_generated_one():
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Sampler names in other tools", 1)[1]
    assert N.markdown_table() in section
