"""Imported first by every benchmark, before torch loads: the process defaults the pvd CLI applies
(`pvd.process_env`: passive OpenMP waiting, freed memory kept for reuse), so that benchmarks measure pvd
as `pvd` runs it. A checkout of an older pvd without that module (a "before" row) runs with its own defaults."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    from pvd.process_env import apply_defaults
except ImportError:
    pass
else:
    apply_defaults()
