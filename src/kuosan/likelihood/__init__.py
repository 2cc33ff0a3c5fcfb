"""kuosan.likelihood (in progress)."""
