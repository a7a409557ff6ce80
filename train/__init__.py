"""Training entry point of a source checkout (`python -m train.train`); the configs live in pvd/training/configs."""
