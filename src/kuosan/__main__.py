"""`python -m kuosan ...` (and `torchrun --nproc_per_node=N -m kuosan train ...`): the kuosan command."""

from .cli import main

if __name__ == "__main__":
    main()
