"""Train BIMNet (stage 1) or PVDNet (stage 2); the logic lives in `pvd.training`.

    python -m train.train --config train/configs/gopro.toml data.root=/data/gopro/train
    torchrun --nproc_per_node 4 -m train.train --config train/configs/dvd.toml data.root=...
    python -m train.train --config train/configs/gopro.toml --resume          # latest checkpoint of run.out_dir
"""

import sys

from pvd.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
