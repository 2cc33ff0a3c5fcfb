"""kuosan.distill (in progress)."""
