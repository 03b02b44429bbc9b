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


# ---------------------------------------------------------------- one spelling per concept (issue 15)
# Read from the parser objects that `transcribe COMMAND` builds, not from the help text.

# Spellings that name a concept which has one canonical flag everywhere.
SYNONYMS = {
    "--batch": "--batch-size", "--bs": "--batch-size", "--batchsize": "--batch-size",
    "--widen": "--crop-widen", "--widening": "--crop-widen",
    "--data": "--train", "--data-dir": "--train", "--train-dir": "--train", "--folder-train": "--train",
    "--seed": "a seed named by what it seeds (--split-seed, --train-seed, --sample-seed, --sampler-seed, ...)",
    "--n": "a name by meaning (--photos to generate, --cards per section, --limit for the first N)",
    "--num": "--photos / --cards / --limit", "--count": "--photos / --cards / --limit",
    "--output": "--out", "-o": "--out", "--out-dir": "--out",
    "--gpu": "--device", "--cuda": "--device", "--cpu": "--device",
    "--num-threads": "--threads", "--nthreads": "--threads",
    "--max": "--limit", "--first": "--limit",
}
# Commands that run a network: each takes --device with the same choices (config.DEVICES).
# Not here: check (float64 and complex-step numpy checks, on the CPU by design).
NETWORK_COMMANDS = ("train", "evaluate", "predict", "transfer", "serve", "learning-curve", "lr-sweep", "search",
                    "bench")


def _parsers():
    """(command, parser) for every command and sub-command, built as cli.main builds them."""
    import argparse
    for name in cli.COMMANDS:
        parser = argparse.ArgumentParser(prog=f"transcribe {name}")
        cli.add_arguments(name)(parser)
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, sub_parser in action.choices.items():
                    yield f"{name} {sub}", sub_parser


def _options(parser):
    import argparse
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def test_every_option_has_help_text():
    import argparse
    missing = [f"{name} {a.option_strings[0]}" for name, p in _parsers() for a in _options(p)
               if a.help != argparse.SUPPRESS and not (a.help or "").strip()]
    assert not missing, f"options without help: {missing}"


def test_one_spelling_per_concept():
    """No known synonym of a canonical flag; a list-valued option may take the plural
    (--batch-sizes), a single value may not."""
    found = []
    for name, p in _parsers():
        for a in _options(p):
            for flag in a.option_strings:
                if flag in SYNONYMS:
                    found.append(f"transcribe {name} {flag}: use {SYNONYMS[flag]}")
                singular = flag[:-1] if flag.endswith("s") else None
                if singular in ("--batch-size", "--crop-widen") and a.nargs not in ("+", "*"):
                    found.append(f"transcribe {name} {flag}: the plural is for lists; use {singular}")
    assert not found, "\n".join(found)


def test_booleans_are_x_no_x_switches():
    """`--x/--no-x` (argparse.BooleanOptionalAction): no `--x BOOL`, no one-way store_true/false."""
    import argparse
    bad = []
    for name, p in _parsers():
        for a in _options(p):
            one_way = isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            bool_value = a.metavar == "BOOL" or (a.choices is not None and set(map(str, a.choices)) <= {"true", "false"})
            if one_way or bool_value:
                bad.append(f"transcribe {name} {'/'.join(a.option_strings)}")
    assert not bad, f"booleans not spelled --x/--no-x: {bad}"


def test_device_wherever_a_network_runs():
    from transcribe import config
    parsers = dict(_parsers())
    for name in NETWORK_COMMANDS:
        device = [a for a in _options(parsers[name]) if "--device" in a.option_strings]
        assert device, f"transcribe {name} has no --device"
        assert tuple(device[0].choices) == config.DEVICES, (name, device[0].choices)


def test_no_group_printed_twice_and_train_help_shows_its_preset():
    from transcribe import config
    for name, p in _parsers():
        titles = [g.title for g in p._action_groups if g._group_actions]
        assert len(titles) == len(set(titles)), (name, titles)
    train = dict(_parsers())["train"]
    preset = next(a for a in _options(train) if "--preset" in a.option_strings)
    assert tuple(preset.choices) == tuple(config.PRESETS)
    kernel = next(a for a in _options(train) if "--kernel" in a.option_strings)
    assert f"{config.DEFAULT_PRESET} preset: {config.PRESETS[config.DEFAULT_PRESET].kernel}" in kernel.help


def test_version(capsys):
    from importlib import metadata
    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out
    try:
        assert out == f"transcribe {metadata.version(cli.DISTRIBUTION)}\n"
    except metadata.PackageNotFoundError:  # this checkout is not the installed distribution
        assert out.startswith(f"transcribe unknown ({cli.DISTRIBUTION} is not installed")


def test_device_cuda_without_cuda_is_one_clear_line(capsys):
    """--device has one behaviour: auto = cuda if available, else cpu; cuda without CUDA is one
    line naming the flag (here through `transcribe bench`, which resolves it before measuring)."""
    import torch
    from transcribe import runs
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: --device cuda is valid here")
    assert runs.resolve_device("auto").type == "cpu" and runs.resolve_device("cpu").type == "cpu"
    assert cli.main(["bench", "--device", "cuda", "--presets", "tiny"]) == 1
    err = capsys.readouterr().err
    assert err == "transcribe bench: error: --device cuda: no CUDA device is available\n"
