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
