"""Training entry points (`python -m train.train`) and the paper's configs (`train/configs/*.toml`)."""
