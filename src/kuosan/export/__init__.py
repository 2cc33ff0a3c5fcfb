"""Interop with other toolkits (docs/interop.md): a local diffusers directory as a kuosan Denoiser, and a kuosan
U-Net run written out as a diffusers DDPMPipeline directory.

    model = kuosan.from_diffusers("path/to/diffusers_dir")      # UNet2DModel + DDPM-family scheduler config
    kuosan.export.export_run("runs/digits-ddpm", "out/ddpm-diffusers", format="diffusers")
"""

from __future__ import annotations

from .diffusers_import import DiffusersUNet, from_diffusers, process_from_scheduler
from .run_export import EXPORT_FORMATS, ExportRefused, export_run

__all__ = ["DiffusersUNet", "from_diffusers", "process_from_scheduler", "export_run", "ExportRefused",
           "EXPORT_FORMATS"]
