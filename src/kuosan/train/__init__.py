"""kuosan.train (in progress)."""
