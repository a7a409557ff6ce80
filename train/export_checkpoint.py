"""Export the network of a training checkpoint as pvd weights (safetensors), optionally stored as float16.

    python train/export_checkpoint.py runs/pvdnet/checkpoints/step_000002000.pt weights/pvd_demo.safetensors --half

A stage-2 checkpoint holds the full model (BIMNet + PVDNet, `pvd.nets.DeblurNet`), a stage-1 checkpoint
BIMNet alone. `pvd.weights.load` casts float16 storage back to float32.
"""

from __future__ import annotations

import argparse
import sys

import torch

from pvd import weights
from pvd.nets import BIMNet, DeblurNet


def export(checkpoint_path: str, output_path: str, half: bool = False) -> int:
    """Write the model of `checkpoint_path` to `output_path`; returns the checkpoint's step."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    state = checkpoint["model"]
    model = DeblurNet() if any(key.startswith("pvdnet.") for key in state) else BIMNet()
    model.load_state_dict(state)
    if half:
        model = model.half()
    step = int(checkpoint["step"])
    config = checkpoint.get("config", {})
    weights.save(model, output_path, config={"training_step": step, "storage": "float16" if half else "float32",
                                             "training_config": config})
    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("output")
    parser.add_argument("--half", action="store_true", help="store float16 tensors (half the size)")
    args = parser.parse_args(argv)
    step = export(args.checkpoint, args.output, args.half)
    print(f"exported step {step} of {args.checkpoint} to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
