"""kuosan.nets (in progress)."""
