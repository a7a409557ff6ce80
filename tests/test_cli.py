"""The CLI's one behaviour for every command: one-line errors (exit 1), Ctrl-C / SIGTERM (exit 130) leaving no
partial output, --quiet, and help that shows defaults and an example."""

from __future__ import annotations

import os
import signal

import pytest

from pvd import cli
from pvd._files import atomic_file
from pvd.commands import HELP


@pytest.mark.parametrize("interrupt", ["sigterm", "ctrl-c"])
def test_interrupt_exits_130_and_leaves_no_partial_output(tmp_path, monkeypatch, capsys, interrupt):
    from pvd.commands import convert

    target = tmp_path / "out.safetensors"

    def interrupted_run(args):
        with atomic_file(target) as temporary:
            temporary.write_bytes(b"half written")
            if interrupt == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise KeyboardInterrupt
        return 0

    monkeypatch.setattr(convert, "run", interrupted_run)
    code = cli.main(["convert", str(tmp_path / "in.pytorch"), str(target)])
    assert code == cli.INTERRUPTED_EXIT == 130
    assert capsys.readouterr().err.strip() == "pvd convert: interrupted"
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the command's only


@pytest.mark.parametrize("command", sorted(HELP))
def test_every_command_has_quiet_and_help_with_defaults_and_an_example(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--quiet" in text, f"pvd {command} has no --quiet"
    assert "example:" in text.lower() and f"pvd {command}" in text.split("xample:", 1)[1]


def test_a_subcommands_argument_error_prints_its_own_usage(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["eval", "--no-such-option"])
    assert done.value.code == 2
    assert capsys.readouterr().err.startswith("usage: pvd eval")


def _frames(folder, count=2, size=48):
    import cv2
    import numpy as np

    folder.mkdir(parents=True)
    for index in range(count):
        cv2.imwrite(str(folder / f"{index:03d}.png"), np.full((size, size, 3), 40 * index, np.uint8))
    return folder


@pytest.mark.parametrize("command", ["deblur", "eval"])
def test_an_output_under_a_file_is_named_in_one_line(tmp_path, capsys, command):
    """Used to be '[Errno 17] File exists' (deblur) or '[Errno 20] Not a directory' (eval)."""
    (tmp_path / "afile").write_text("keep me")
    if command == "deblur":
        source = _frames(tmp_path / "clip")
    else:
        source = tmp_path / "data"
        _frames(source / "v" / "blur_gamma")
        _frames(source / "v" / "sharp")
    code = cli.main([command, str(source), "-o", str(tmp_path / "afile" / "out"), "--allow-untrained", "--quiet",
                     "--device", "cpu"])
    error = capsys.readouterr().err
    assert code == 1 and error.count("\n") == 1
    assert f"{tmp_path / 'afile'} is a file, not a folder" in error and "Errno" not in error
    assert (tmp_path / "afile").read_text() == "keep me"


@pytest.mark.parametrize("command", ["deblur", "convert"])
def test_a_folder_given_as_weights_is_called_a_folder(tmp_path, capsys, command):
    (tmp_path / "wdir").mkdir()
    args = ([str(_frames(tmp_path / "clip")), "-o", str(tmp_path / "out"), "--weights", str(tmp_path / "wdir")]
            if command == "deblur" else [str(tmp_path / "wdir"), str(tmp_path / "x.safetensors")])
    assert cli.main([command, *args]) == 1
    assert f"{tmp_path / 'wdir'} is a folder, not a" in capsys.readouterr().err


def test_a_missing_optional_package_is_one_line(tmp_path, monkeypatch, capsys):
    """pvd synth without scikit-image (its photographs) used to end in a traceback."""
    import sys

    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage now raises ImportError
    assert cli.main(["synth", str(tmp_path / "synth"), "--videos", "1", "--quiet"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("pvd synth: error:") and "scikit-image" in error and error.count("\n") == 1
    assert not (tmp_path / "synth").exists()
