"""eval/measure_weights.py: the ablation and flow-error numbers behind weights/README.md, on a tiny synthetic set."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np

from pvd import weights
from pvd.data import synth
from pvd.nets import DeblurNet

from test_synth import textured_photo  # tests/ is on sys.path (pytest rootdir-relative import)

SCRIPT = Path(__file__).resolve().parents[1] / "eval" / "measure_weights.py"


def load_script():
    spec = importlib.util.spec_from_file_location("measure_weights", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measure_on_tiny_synthetic_set(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the networks run on the reference kernels (the interpreter is slow)
    photos = {name: textured_photo(seed) for seed, name in enumerate(("alpha", "beta"))}
    settings = synth.SynthSettings(frames=3, height=64, width=64, subframes=3, object_probability=0.0)
    data = synth.generate_dataset(tmp_path / "synth", photos, videos=1, settings=settings, seed=3)
    weights_path = tmp_path / "random.safetensors"
    weights.save(DeblurNet(), weights_path)

    measure = load_script()
    assert measure.main([str(data), "--weights", str(weights_path), "--device", "cpu", "-o", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "measure.json").read_text())
    printed = capsys.readouterr().out
    assert "BIMNet (blurry pairs)" in printed and "zero flow" in printed

    assert result["videos"] == 1 and result["frames_scored"] == 2  # frames 2..3 of one video
    # Zero-flow EPE, computed here from the flow files: the mean over frames of the mean flow length.
    flows = [np.load(path) for path in sorted((data / "synth_0000" / "flow").glob("*.npy"))[1:]]
    expected = np.mean([np.linalg.norm(flow, axis=0).mean() for flow in flows])
    assert math.isclose(result["epe_zero_flow"], expected, rel_tol=1e-5)
    assert expected > 0.1  # the camera moves
    for key in ("psnr_blurry", "psnr_deblurred", "psnr_zero_flow_pv", "epe_bimnet", "epe_bimnet_blurry"):
        assert math.isfinite(result[key]), key
