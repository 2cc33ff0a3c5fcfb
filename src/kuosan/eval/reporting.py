"""report.json -> report.md: the FD-by-NFE table, the full table, the floor, the likelihood and two checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["write_markdown", "headline", "markdown_table"]


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def headline(report: dict[str, Any], fast_nfe: int = 10, reference: tuple[str, int] = ("ddpm", 1000)) -> list[str]:
    """The two claims the digits report checks, stated with their numbers (or why they cannot be checked)."""
    lines = []
    res = report["results"]
    ref = [r for r in res if r["sampler"] in (reference[0], "ancestral") and r["nfe"] == reference[1]]
    fast = sorted((r for r in res if r["nfe"] == fast_nfe), key=lambda r: r["fd"])
    if ref and fast:
        best, base = fast[0], ref[0]
        ratio = best["fd"] / base["fd"]
        verdict = "holds" if ratio <= 1.10 else "does not hold"
        pm = lambda r: f" ± {r['fd_std']:.3f}" if "fd_std" in r else ""  # noqa: E731
        lines.append(
            f"Best {fast_nfe}-NFE sampler: **{best['sampler']}**, FD {best['fd']:.3f}{pm(best)} = {ratio:.2f} x the "
            f"FD of {reference[1]}-step ancestral sampling ({base['fd']:.3f}{pm(base)}); 'within 10%' {verdict}."
        )
        if base.get("fd_inf") is not None and any(r.get("fd_inf") is not None for r in fast):
            best_inf = min((r for r in fast if r.get("fd_inf") is not None), key=lambda r: r["fd_inf"])
            ratio_inf = best_inf["fd_inf"] / base["fd_inf"] if base["fd_inf"] > 0 else float("inf")
            lines.append(
                f"Without the small-sample bias (FD_inf): best {fast_nfe}-NFE **{best_inf['sampler']}** "
                f"{best_inf['fd_inf']:.3f} vs {base['fd_inf']:.3f} = {ratio_inf:.2f} x; 'within 10%' "
                f"{'holds' if ratio_inf <= 1.10 else 'does not hold'}."
            )
    nll = report.get("nll") or {}
    if nll.get("ode_bpd") is not None and nll.get("vlb_bpd") is not None:
        below = nll["ode_bpd"] < nll["vlb_bpd"]
        paired = (f" (paired difference {nll['ode_minus_vlb']:.3f} ± {nll['ode_minus_vlb_se']:.3f} s.e.)"
                  if "ode_minus_vlb" in nll else "")
        lines.append(
            f"Bits/dim: PF-ODE {nll['ode_bpd']:.3f} vs DDPM bound {nll['vlb_bpd']:.3f}{paired}: "
            f"the ODE is {'below' if below else 'NOT below'} the bound."
        )
    return lines


def _fd_grid(report: dict[str, Any], key: str = "fd", label: str = "FD") -> str:
    res = report["results"]
    nfes = sorted({r["nfe"] for r in res})
    samplers = list(dict.fromkeys(r["sampler"] for r in res))
    cell = {(r["sampler"], r["nfe"]): r.get(key) for r in res}
    rows = [[s, *(_fmt(cell.get((s, k))) for k in nfes)] for s in samplers]
    rows.append(["held-out real data (floor)", *([_fmt(report["floor"].get(key))] + [""] * (len(nfes) - 1))])
    return markdown_table([f"{label} \\ NFE", *map(str, nfes)], rows)


def _metric_cells(r: dict[str, Any]) -> list[str]:
    fd = _fmt(r["fd"]) + (f" ± {r['fd_std']:.2f}" if "fd_std" in r else "")
    cells = [fd, _fmt(r.get("fd_inf")), _fmt(r.get("fd_matched")), f"{r['kid']:.2f} ± {r['kid_std']:.2f}",
             _fmt(r["precision"], 2), _fmt(r["recall"], 2), _fmt(r.get("nn_ratio"), 2)]
    return cells + ([_fmt(r["sw"], 4), f"{r['mmd']:.2e}"] if "sw" in r else [])


def _full_table(report: dict[str, Any]) -> str:
    rows = [[r["sampler"], r["nfe"], r["nfe_used"], *_metric_cells(r), f"{r['seconds_per_1000']:.1f}"]
            for r in report["results"]]
    rows.append(["held-out real data", "", "", *_metric_cells(report["floor"]), ""])
    header = ["sampler", "NFE", "NFE used", "FD ± boot. std", "FD_inf", f"FD ({report['heldout']})", "KID ± std",
              "precision", "recall", "NN ratio", "s / 1000 samples"]
    if "sw" in report["floor"]:
        header[-1:-1] = ["SW2", "MMD^2"]
    return markdown_table(header, rows)


def _nll_section(nll: dict[str, Any]) -> list[str]:
    if "skipped" in nll:
        return ["## Held-out likelihood", "", nll["skipped"], ""]
    unit = "bits/dim" if "ode_bpd" in nll else "nats/sample"
    key = "bpd" if "ode_bpd" in nll else "nll"
    rows = [["probability-flow ODE (RK45, " + ("Hutchinson, dequantised)" if key == "bpd" else "exact divergence)"),
             _fmt(nll.get(f"ode_{key}")), _fmt(nll.get(f"ode_{key}_se")), nll.get("ode_nfe"), nll.get("ode_seconds")]]
    if f"vlb_{key}" in nll:
        rows.append(["DDPM variational bound (all terms)", _fmt(nll[f"vlb_{key}"]), _fmt(nll[f"vlb_{key}_se"]),
                     nll["vlb_nfe"], nll["vlb_seconds"]])
        rows.append(["ODE − bound (paired, per sample)", _fmt(nll["ode_minus_vlb"]), _fmt(nll["ode_minus_vlb_se"]),
                     "", ""])
    lines = ["## Held-out likelihood", "", f"{nll['n']} held-out samples; {nll['data']}.", "",
             markdown_table(["estimate", unit, "s.e.", "NFE", "seconds"], rows), ""]
    return lines + ([f"DDPM bound not computed: {nll['vlb_note']}", ""] if "vlb_note" in nll else [])


def _interval_note(report: dict[str, Any]) -> str:
    iv = report.get("guidance_interval")
    if iv is None:
        return ""
    return (f" Guidance acts only at noise levels sigma/alpha in ({iv[0]:g}, {iv[1]:g}] (the run's "
            "sample.guidance_interval; arXiv:2404.07724), the conditional model elsewhere, so w = 0 is the "
            "unconditional model only inside it.")


def _guidance_section(report: dict[str, Any]) -> list[str]:
    """The guidance sweep: per sampler, NFE and w, class accuracy beside FD, precision and recall."""
    ordered = sorted(report["results"], key=lambda r: (r["method"], r["nfe"], r["guidance"]))
    rows = [[r["method"], r["nfe"], f"{r['guidance']:g}", _fmt(r["accuracy"], 3), _fmt(r["fd"]),
             _fmt(r["precision"], 2), _fmt(r["recall"], 2)] for r in ordered]
    return ["## Classifier-free guidance", "", f"Class accuracy: the fraction of samples that {report['judge']} "
            "judges to be the class they were drawn for (classes in turn). w = 0: the unconditional model, "
            "w = 1: the conditional model." + _interval_note(report), "",
            markdown_table(["sampler", "NFE", "w", "accuracy", "FD", "precision", "recall"], rows), "",
            f"![FD vs accuracy]({report['tradeoff_plot']})", ""]


def write_markdown(report: dict[str, Any], path: str | Path) -> Path:
    """report.md: what was measured, the headline checks, the FD table, the full table, the likelihood."""
    m = report["machine"]
    lines = [
        f"# Sample quality: {report['recipe']}{', EMA weights' if report.get('ema') else ''}",
        "",
        f"{report['n']} samples per sampler and NFE, seed {report['seed']}; features: {report['features']}; "
        f"reference: {report['reference']}; floor: {report['heldout']} held-out real samples against the same "
        f"reference. Machine: {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, load average "
        f"{m['load_average_1min']} at the end, {m['device']}, torch {m['torch']}.",
        "",
    ]
    if report.get("note"):
        lines += [f"Note: {report['note']}.", ""]
    lines += [f"- {h}" for h in headline(report)] + [""]
    if report["results"]:
        lines += ["## Frechet distance by NFE", "", _fd_grid(report), ""]
        if report.get("plot"):
            lines += [f"![FD vs NFE]({report['plot']})", ""]
        if all(r.get("fd_inf") is not None for r in report["results"]):
            lines += ["FD_inf, the same with the generated set's small-sample bias k/N extrapolated away (Chong & "
                      "Forsyth 2020, arXiv:1911.07023; noisier, comparable across sample sizes):", "",
                      _fd_grid(report, "fd_inf", "FD_inf"), ""]
        lines += ["## All metrics", "", f"FD ({report['heldout']}): FD of the first {report['heldout']} samples only, "
                  "the floor's sample size and so its small-sample bias. FD_inf: FD extrapolated to infinitely many "
                  "samples (the bias k/N removed). ± boot. std: the standard deviation of FD "
                  "over bootstrap resamples of the generated set (its share of FD's noise). KID: mean ± std over "
                  "subsets, in feature units. NN ratio: median distance from a sample to its nearest training sample "
                  "over the same for held-out data (well below 1: copying).", "", _full_table(report), ""]
    if report.get("tradeoff_plot"):
        lines += _guidance_section(report)
    if report["skipped"]:
        lines += ["## Skipped", ""] + [f"- {s['sampler']} at NFE {s['nfe']}: {s['reason']}" for s in report["skipped"]]
        lines += [""]
    for sampler, png in report.get("sheets", {}).items():
        lines += [f"![{sampler} samples]({png})", ""]
    if report.get("nll"):
        lines += _nll_section(report["nll"])
    path = Path(path)
    path.write_text("\n".join(lines))
    return path
