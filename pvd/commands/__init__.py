"""Sub-commands of the `pvd` CLI, one module each (see pvd/cli.py)."""
