"""kuosan.eval (in progress)."""
