"""kuosan.data (in progress)."""
