"""Without Triton (macOS, Windows: it ships Linux wheels only) pvd still imports and runs on the references."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import importlib.abc, sys

    class NoTriton(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoTriton())
    import torch
    from pvd import kernels, stream  # noqa: F401 - the streaming deblurrer imports without Triton too
    from pvd.kernels import reference
    from pvd.nets import DeblurNet
    assert not kernels.HAS_TRITON and kernels.warp.__module__ == "pvd.kernels.portable"
    assert not any(name.split(".")[0] == "triton" for name in sys.modules)
    torch.manual_seed(0)
    x, flow = torch.randn(2, 3, 9, 11), torch.randn(2, 2, 9, 11) * 3
    torch.testing.assert_close(kernels.warp(x, flow), reference.warp(x, flow))  # pvd.kernels.cpu: rounding only
    f1, f2 = torch.randn(2, 2, 5, 7, 9).unbind(0)
    torch.testing.assert_close(kernels.correlation(f1, f2, 2, 2), reference.correlation(f1, f2, 2, 2))
    fill = torch.randn(2, 3, 9, 11)
    torch.testing.assert_close(kernels.pixel_volume(x, flow, fill), reference.pixel_volume(x, flow, fill, 5),
                               rtol=0, atol=0)
    try:
        kernels.pixel_volume(x, flow, fill, kernel_size=4)
    except ValueError as error:
        assert "odd" in str(error)
    else:
        raise AssertionError("kernel_size=4 was accepted")
    model = DeblurNet().eval()
    frames = [torch.rand(1, 3, 40, 48) * 2 - 1 for _ in range(3)]
    with torch.no_grad():
        out = model(*frames, frames[0])
    assert out.shape == (1, 3, 40, 48) and torch.isfinite(out).all()
    print("ok")
""")


def test_pvd_runs_without_triton(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
