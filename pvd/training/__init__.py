"""Training of PVDNet: stage 1 (BIMNet, blur-invariant loss) and stage 2 (PVDNet with BIMNet frozen).

    from pvd.training import load_config, train
    from pvd.training.cli import config_path
    result = train(load_config(config_path("gopro"), ["data.root=/data/gopro_train"]))

Modules: `config` (TOML + overrides), `losses`, `schedule` (lr schedules), `stages` (the two trainers),
`loop` (`train`: processes, data, logging, checkpoints, resume), `checkpoint`, `logs`, `cli` (the command line
behind `pvd train`, `python -m pvd.training.cli` and `python -m train.train`).
"""

from .config import TrainConfig, load_config
from .loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_config", "train"]
