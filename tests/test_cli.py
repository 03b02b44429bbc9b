"""The command line answers at once: `transcribe --help` must not import torch."""

import subprocess
import sys

import pytest

from transcribe import cli


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_help_lists_every_command_without_importing_torch():
    out = subprocess.run([sys.executable, "-m", "transcribe.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in cli.COMMANDS:
        assert name in out.stdout
    loaded = _modules_after("import contextlib, io\nfrom transcribe import cli\n"
                            "with contextlib.redirect_stdout(io.StringIO()):\n"
                            "    try: cli.main(['--help'])\n"
                            "    except SystemExit: pass")
    assert "torch" not in loaded and "matplotlib" not in loaded


def test_every_command_help_answers_without_importing_torch():
    """`transcribe COMMAND --help` for every command: its flags come from cli.py (core commands)
    or from a study module that imports torch only inside its functions."""
    code = ("import contextlib, io\nfrom transcribe import cli\n"
            "for name in cli.COMMANDS:\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "        try: cli.main([name, '--help'])\n"
            "        except SystemExit: pass\n"
            "    assert 'usage: transcribe ' + name in out.getvalue(), name")
    loaded = _modules_after(code)
    assert "torch" not in loaded and "matplotlib" not in loaded


def test_every_registered_command_has_its_functions():
    import importlib
    for name, (module, _) in cli.COMMANDS.items():
        mod = importlib.import_module(module)
        fn = name.replace("-", "_")
        assert callable(cli.add_arguments(name)), name
        assert callable(getattr(mod, f"run_{fn}")), name


def test_unknown_command_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["transcribe-everything"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_bad_input_is_one_clear_line_not_a_traceback(tmp_path, capsys):
    bad = tmp_path / "predictions.jsonl"
    bad.write_text("this is not json\n")
    assert cli.main(["gallery", str(bad), "--out", str(tmp_path / "g")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("transcribe gallery: error: ") and str(bad) in err and "Traceback" not in err
