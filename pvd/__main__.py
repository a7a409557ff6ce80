"""`python -m pvd ...` (and `torchrun --nproc_per_node N -m pvd deblur|eval ...`): the `pvd` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
