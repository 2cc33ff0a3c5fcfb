"""Forward processes x_t = alpha(t) x_0 + sigma(t) eps (book chapter 4)."""

from .base import Process, append_dims, as_time
from .continuous import EDM, VE, VP, RectifiedFlow, SubVP
from .discrete import DiscreteVP
from .grids import GRID_KINDS

__all__ = ["Process", "DiscreteVP", "VP", "SubVP", "VE", "EDM", "RectifiedFlow", "GRID_KINDS", "append_dims", "as_time"]
