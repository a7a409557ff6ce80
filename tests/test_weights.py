"""pvd checkpoints (safetensors + metadata) and conversion of the original PVDNet-repository state dicts.

The original keys and shapes come from tests/data/original_state_dict_keys.json (dumped from the original
modules). Synthetic original state dicts fill every tensor with its own constant, so each pvd parameter
shows which original tensor it received.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np

import pytest
import torch
from safetensors.torch import save_file

import pvd
from pvd import weights
from pvd.data import synth
from pvd.nets import BIMNet, DeblurNet, PVDNet, PVDNetLarge

ORIGINAL = json.loads((Path(__file__).parent / "data" / "original_state_dict_keys.json").read_text())
ARCH_OF_ORIGINAL = {"liteflownet": "bimnet", "pvdnet": "pvdnet", "pvdnet_large": "pvdnet_large"}
PVD_CLASS = {"bimnet": BIMNet, "pvdnet": PVDNet, "pvdnet_large": PVDNetLarge}

# Where an original tensor must land in pvd's networks, written out from the original architecture.
BIMNET_LANDING = {
    "moduleFeatures.moduleOne.0.weight": lambda m: m.features.levels["level1"][0].weight,
    "moduleFeatures.moduleTwo.4.bias": lambda m: m.features.levels["level2"][4].bias,
    "moduleFeatures.moduleFou.2.weight": lambda m: m.features.levels["level4"][2].weight,
    "moduleFeatures.moduleSix.0.weight": lambda m: m.features.levels["level6"][0].weight,
    "moduleMatching.0.moduleFeat.0.weight": lambda m: m.matching["level2"].feature_proj.weight,
    "moduleMatching.0.moduleUpcorr.weight": lambda m: m.matching["level2"].upsample_cost.weight,
    "moduleMatching.1.moduleUpcorr.weight": lambda m: m.matching["level3"].upsample_cost.weight,
    "moduleMatching.3.moduleUpflow.weight": lambda m: m.matching["level5"].upsample_flow.weight,
    "moduleMatching.4.moduleMain.6.bias": lambda m: m.matching["level6"].flow_head[6].bias,
    "moduleSubpixel.0.moduleFeat.0.bias": lambda m: m.subpixel["level2"].feature_proj.bias,
    "moduleSubpixel.2.moduleMain.0.weight": lambda m: m.subpixel["level4"].flow_head[0].weight,
    "moduleRegularization.1.moduleFeat.0.weight": lambda m: m.regularization["level3"].feature_proj.weight,
    "moduleRegularization.0.moduleDist.1.weight": lambda m: m.regularization["level2"].distance[1].weight,
    "moduleRegularization.3.moduleDist.0.bias": lambda m: m.regularization["level5"].distance[0].bias,
    "moduleRegularization.4.moduleMain.10.bias": lambda m: m.regularization["level6"].trunk[10].bias,
    "moduleRegularization.3.moduleScaleX.weight": lambda m: m.regularization["level5"].combine_x.weight,
    "moduleRegularization.2.moduleScaleY.bias": lambda m: m.regularization["level4"].combine_y.bias,
}
PVDNET_LANDING = {
    "PV_dec.2.weight": lambda m: m.volume_encoder[2].weight,
    "img_dec.0.bias": lambda m: m.image_encoder[0].bias,
    "d0.weight": lambda m: m.fuse.weight,
    "d1.2.weight": lambda m: m.down_half[2].weight,
    "temp.2.bias": lambda m: m.down_quarter[2].bias,
    "RBs.0.0.weight": lambda m: m.res_blocks[0][0].weight,
    "RBs.11.2.weight": lambda m: m.res_blocks[11][2].weight,
    "RB_end.0.weight": lambda m: m.res_end[0].weight,
    "dconv1.weight": lambda m: m.up_half.weight,
    "dconv1_end.1.bias": lambda m: m.refine_half.bias,
    "dconv2.bias": lambda m: m.up_full.bias,
    "dconv2_end.1.weight": lambda m: m.refine_full.weight,
    "end.weight": lambda m: m.to_residual.weight,
}
PVDNET_LARGE_LANDING = {**PVDNET_LANDING, "RBs.23.2.bias": lambda m: m.res_blocks[23][2].bias}
LANDING = {"liteflownet": BIMNET_LANDING, "pvdnet": PVDNET_LANDING, "pvdnet_large": PVDNET_LARGE_LANDING}


def constant_original_state_dict(arch: str, prefix: str = "", first: int = 1) -> dict[str, torch.Tensor]:
    """Every original key of `arch` (prefixed), each tensor filled with its own constant first, first+1, ...

    The tensors are expanded scalars (no memory), which keeps these tests fast.
    """
    return {f"{prefix}{key}": torch.tensor(float(first + index)).expand(shape)
            for index, (key, shape) in enumerate(ORIGINAL[arch]["keys"].items())}


def _value(tensor: torch.Tensor) -> float:
    return tensor[(0,) * tensor.dim()].item()


def assert_each_tensor_landed_once(model: torch.nn.Module, original: dict[str, torch.Tensor]) -> None:
    """The parameters' constants are exactly the original tensors' constants, each used once."""
    values = sorted(_value(tensor) for tensor in model.state_dict().values())
    assert values == sorted(_value(tensor) for tensor in original.values())


# ---- from_original -------------------------------------------------------------------------------------

@pytest.mark.parametrize("original_arch", list(ARCH_OF_ORIGINAL))
@pytest.mark.parametrize("prefix", ["", "module."])
def test_from_original_single_network(original_arch, prefix):
    original = constant_original_state_dict(original_arch, prefix)
    architecture, converted = weights.from_original(original)
    assert architecture == ARCH_OF_ORIGINAL[original_arch]
    with torch.device("meta"):  # no initialisation: every tensor comes from `converted`
        model = PVD_CLASS[architecture]()
    model.load_state_dict(converted, strict=True, assign=True)
    for key, landing in LANDING[original_arch].items():
        torch.testing.assert_close(landing(model).detach(), original[prefix + key], rtol=0, atol=0, msg=key)
    assert_each_tensor_landed_once(model, original)


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_from_original_full_checkpoint(large, prefix):
    pvdnet_arch = "pvdnet_large" if large else "pvdnet"
    bimnet_part = constant_original_state_dict("liteflownet", f"{prefix}BIMNet.")
    pvdnet_part = constant_original_state_dict(pvdnet_arch, f"{prefix}PVDNet.", first=len(bimnet_part) + 1)
    original = {**bimnet_part, **pvdnet_part}
    architecture, converted = weights.from_original(original)
    assert architecture == "deblurnet"
    model = weights.build(architecture, converted)
    assert isinstance(model, DeblurNet) and model.large == large
    for key, landing in BIMNET_LANDING.items():
        assert torch.equal(landing(model.bimnet).detach(), original[f"{prefix}BIMNet.{key}"]), key
    for key, landing in LANDING[pvdnet_arch].items():
        assert torch.equal(landing(model.pvdnet).detach(), original[f"{prefix}PVDNet.{key}"]), key
    assert_each_tensor_landed_once(model, original)


def test_from_original_rejects_unknown_keys():
    original = constant_original_state_dict("pvdnet")
    original["RBs.12.0.weightt"] = torch.zeros(3)
    original["extra.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected tensors: .*RBs\.12\.0\.weightt.*extra\.bias"):
        weights.from_original(original)


def test_from_original_rejects_missing_keys():
    original = constant_original_state_dict("liteflownet")
    del original["moduleRegularization.2.moduleScaleY.bias"]
    with pytest.raises(ValueError, match=r"missing tensors: moduleRegularization\.2\.moduleScaleY\.bias"):
        weights.from_original(original)


def test_from_original_rejects_misshaped_tensors():
    original = constant_original_state_dict("liteflownet", "module.BIMNet.")
    original.update(constant_original_state_dict("pvdnet", "module.PVDNet."))
    original["module.PVDNet.d0.weight"] = torch.zeros(64, 95, 5, 5)
    with pytest.raises(ValueError, match=r"mis-shaped tensors: PVDNet\.d0\.weight \(64, 95, 5, 5\) "
                                         r"\(expected \(64, 96, 5, 5\)\)"):
        weights.from_original(original)


def test_from_original_rejects_unrecognised_and_partial_dicts():
    with pytest.raises(ValueError, match="unrecognised state dict"):
        weights.from_original({"conv.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="non-empty"):
        weights.from_original({})
    with pytest.raises(ValueError, match=r"lacks every PVDNet\.\* tensor"):
        weights.from_original(constant_original_state_dict("liteflownet", "module.BIMNet."))
    both = {"module.d0.weight": torch.zeros(1), "d0.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="both with and without"):
        weights.from_original(both)


# ---- save / load ---------------------------------------------------------------------------------------

def patterned(cls, **kwargs) -> torch.nn.Module:
    """A `cls` network whose i-th tensor is the constant i (cheaper than random initialisation)."""
    with torch.device("meta"):
        model = cls(**kwargs)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for index, tensor in enumerate(model.state_dict().values()):
            tensor.fill_(float(index))
    return model


def test_save_load_round_trip(tmp_path):
    model = patterned(BIMNet)
    config = {"stage": 1, "lr": 1e-4, "note": "round trip"}
    path = weights.save(model, tmp_path / "sub" / "bimnet.safetensors", config=config)
    assert sorted(p.name for p in path.parent.iterdir()) == ["bimnet.safetensors"]  # no temp file left
    loaded = weights.load(path, architecture="bimnet")
    assert type(loaded) is BIMNet and not loaded.training
    expected = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    checkpoint = weights.load_state_dict_file(path)
    assert checkpoint.architecture == "bimnet"
    assert checkpoint.config == config
    assert checkpoint.pvd_version == pvd.__version__
    assert checkpoint.state_dict.keys() == expected.keys()


def test_deblurnet_round_trip(tmp_path):
    model = patterned(DeblurNet)
    path = weights.save(model, tmp_path / "deblurnet.safetensors")
    assert weights.load_state_dict_file(path).config is None
    loaded = weights.load(path)
    assert isinstance(loaded, DeblurNet) and not loaded.large
    expected = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_load_into_and_the_wrong_architecture(tmp_path):
    source = patterned(PVDNet)
    path = weights.save(source, tmp_path / "pvdnet.safetensors")
    target = patterned(PVDNet)
    with torch.no_grad():
        target.fuse.weight.fill_(-1.0)
    assert weights.load_into(target, path) is target
    expected = source.state_dict()
    for name, tensor in target.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    with pytest.raises(ValueError, match="holds architecture 'pvdnet', expected 'bimnet'"):
        weights.load(path, architecture="bimnet")
    with pytest.raises(ValueError, match="holds architecture 'pvdnet', but the model is 'pvdnet_large'"):
        weights.load_into(PVDNetLarge(), path)


def _write_pvd_file(path, tensors, architecture="pvdnet"):
    metadata = {"format": "pvd", "architecture": architecture, "config": "null", "pvd_version": pvd.__version__}
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_load_names_missing_unexpected_and_misshaped_tensors(tmp_path):
    good = {name: t.contiguous() for name, t in PVDNet().state_dict().items()}
    missing = dict(good)
    del missing["res_blocks.3.2.bias"]
    with pytest.raises(ValueError, match=r"missing tensors: res_blocks\.3\.2\.bias"):
        weights.load(_write_pvd_file(tmp_path / "missing.safetensors", missing))
    unexpected = dict(good, **{"res_blocks.12.0.bias": torch.zeros(128)})
    with pytest.raises(ValueError, match=r"unexpected tensors: res_blocks\.12\.0\.bias"):
        weights.load(_write_pvd_file(tmp_path / "unexpected.safetensors", unexpected))
    misshaped = dict(good, **{"fuse.weight": torch.zeros(64, 96, 3, 3)})
    with pytest.raises(ValueError, match=r"mis-shaped tensors: fuse\.weight \(64, 96, 3, 3\) "
                                         r"\(expected \(64, 96, 5, 5\)\)"):
        weights.load(_write_pvd_file(tmp_path / "misshaped.safetensors", misshaped))


def test_load_rejects_files_that_are_not_pvd_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        weights.load(tmp_path / "absent.safetensors")
    original = tmp_path / "PVDNet_DVD.pytorch"
    torch.save({"d0.weight": torch.zeros(64, 96, 5, 5)}, original)
    with pytest.raises(ValueError, match="not a safetensors file.*pvd convert"):
        weights.load(original)
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(1)}, str(bare))
    with pytest.raises(ValueError, match="without pvd metadata"):
        weights.load(bare)
    unknown = _write_pvd_file(tmp_path / "unknown.safetensors", {"x": torch.zeros(1)}, architecture="resnet")
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        weights.load(unknown)


def test_save_rejects_foreign_models_and_configs(tmp_path):
    with pytest.raises(ValueError, match="not a pvd network"):
        weights.save(torch.nn.Conv2d(1, 1, 1), tmp_path / "conv.safetensors")
    with pytest.raises(ValueError, match="JSON"):
        weights.save(PVDNet(), tmp_path / "pvdnet.safetensors", config={"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_convert_original_file(tmp_path):
    original = {f"module.{k}": torch.randn(v) for k, v in ORIGINAL["pvdnet"]["keys"].items()}
    source = tmp_path / "PVDNet_DVD.pytorch"
    torch.save(original, source)
    destination = tmp_path / "pvdnet_dvd.safetensors"
    assert weights.convert_original(source, destination) == "pvdnet"
    model = weights.load(destination, architecture="pvdnet")
    for key, landing in PVDNET_LANDING.items():
        assert torch.equal(landing(model).detach(), original[f"module.{key}"]), key


def test_saved_files_get_default_permissions(tmp_path):
    """Atomic writes go through tempfile (mode 0600); the final file must be as readable as open() makes it."""
    old = os.umask(0o022)
    try:
        weights.save(BIMNet(), tmp_path / "bimnet.safetensors")
        photo = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
        settings = synth.SynthSettings(frames=2, height=32, width=32)
        synth.generate_dataset(tmp_path / "synth", {"noise": photo}, 1, settings, seed=0)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "bimnet.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "synth").stat().st_mode) == 0o755


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_at_load_and_convert(tmp_path, bad_value):
    """NaN/inf weights would deblur to black frames: refused (naming the tensor) wherever weights come in."""
    model = PVDNet()
    with torch.no_grad():
        model.fuse.weight[0, 0, 0, 0] = bad_value
    path = weights.save(model, tmp_path / "bad.safetensors")  # saving is allowed: training may want to inspect
    with pytest.raises(ValueError, match=r"non-finite values \(NaN/inf\) in 1 tensor.*fuse\.weight"):
        weights.load(path)
    with pytest.raises(ValueError, match="non-finite"):
        weights.load_into(PVDNet(), path)
    original = {f"module.{k}": torch.randn(v) for k, v in ORIGINAL["pvdnet"]["keys"].items()}
    original[next(iter(original))][..., 0] = bad_value
    torch.save(original, tmp_path / "PVDNet_bad.pytorch")
    destination = tmp_path / "converted.safetensors"
    with pytest.raises(ValueError, match="non-finite"):
        weights.convert_original(tmp_path / "PVDNet_bad.pytorch", destination)
    assert not destination.exists()


def test_convert_refuses_pickles_without_advising_weights_only_false(tmp_path):
    source = tmp_path / "evil.pytorch"
    torch.save({"module.x": torch.zeros(1), "thing": object.__new__(PickledThing)}, source)
    with pytest.raises(ValueError) as caught:
        weights.convert_original(source, tmp_path / "out.safetensors")
    message = str(caught.value)
    assert "refuses to unpickle" in message and "weights_only" not in message and "\n" not in message


class PickledThing:
    """A class a checkpoint may not carry (torch.load(weights_only=True) refuses it)."""
