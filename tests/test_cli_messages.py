"""What the command line says: one ``error: ...`` line per error (usage errors too), the exit codes of the README's
table, and the README's lists of options and names kept equal to the code's. Fast: no model is built."""
import json
import sys
from pathlib import Path

import pytest

import bertc.errors as errors
from bertc.cli import main
from bertc.errors import EXIT_BAD_SPEC

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


# --- usage errors: one line, as every other error ------------------------------------------------------------------

@pytest.mark.parametrize("argv, command, message", [
    (["build"], "bertc build", "Missing argument 'SPEC'"),
    (["build", "spec.json"], "bertc build", "Missing option '-o' / '--out'"),
    (["build", "spec.json", "-o", "out", "--variants", "onnx_int9"], "bertc build",
     "Invalid value for --variants: unknown variant(s) 'onnx_int9'"),
    (["build", "spec.json", "-o"], "bertc build", "Option '-o' requires an argument"),
    (["build", "--nope"], "bertc build", "No such option '--nope'"),
    (["nosuch"], "bertc", "No such command 'nosuch'"),
])
def test_a_usage_error_is_one_error_line_naming_the_commands_help(argv, command, message, capsys):
    """Click's Usage / Try / Error block was three lines and a blank one, where every other error is one line."""
    assert main(argv) == EXIT_BAD_SPEC
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.endswith(f" (see '{command} --help')\n"), err
    assert err.count("\n") == 1 and "Usage:" not in err and "Try " not in err


def test_help_and_no_command_still_print_the_help(capsys):
    assert main(["build", "--help"]) == 0
    assert capsys.readouterr().out.startswith("Usage: bertc build [OPTIONS] SPEC")
    assert main([]) == EXIT_BAD_SPEC   # `bertc` alone: the commands, on stderr (as Click does)
    err = capsys.readouterr().err
    assert err.startswith("Usage: bertc [OPTIONS] COMMAND") and "Commands:" in err and "error:" not in err


# --- exit codes ----------------------------------------------------------------------------------------------------

def test_sigterm_has_its_row_in_both_exit_code_tables():
    """bertc run exits 143 on SIGTERM; neither the README's table nor bertc/errors.py's ("the same table") had it."""
    assert errors.EXIT_TERMINATED == 143
    assert "143   ``EXIT_TERMINATED``" in errors.__doc__ and "nothing was written" in errors.__doc__
    assert "| 143 | `bertc run` ended by SIGTERM" in README and "nothing was written |" in README
