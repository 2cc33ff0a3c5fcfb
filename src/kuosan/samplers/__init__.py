"""kuosan.samplers (in progress)."""
