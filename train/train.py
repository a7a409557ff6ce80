"""Train BIMNet (stage 1) or PVDNet (stage 2); the logic lives in `pvd.training` (the same as `pvd train`).

    python -m train.train --config gopro data.root=/data/gopro/train
    torchrun --nproc_per_node 4 -m train.train --config dvd data.root=...
    python -m train.train --config gopro --resume          # latest checkpoint of run.out_dir
Named configs are the files in pvd/training/configs (also `torchrun ... -m pvd.training.cli` from an install).
"""

import sys

from pvd.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
