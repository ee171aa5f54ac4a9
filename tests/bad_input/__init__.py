"""Bad input from careless or hostile users: one clear line, exit code 2 (CLI) / UserError (API)."""

from __future__ import annotations

from openjanus.cli import main


def cli_error(argv: list[str], capsys) -> str:
    """Run the CLI on `argv`; assert exit code 2 and a single error line, and return that line.

    A "note:" line (a random-weight preset says so) may come before it; nothing else may.
    Usage errors leave argparse through SystemExit(2); errors of the commands return 2.
    """
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    captured = capsys.readouterr()
    assert rc == 2, f"exit code {rc}; stderr: {captured.err}"
    lines = [line for line in captured.err.strip().splitlines() if not line.startswith("note:")]
    assert len(lines) == 1, f"expected one error line, got: {captured.err}"
    assert "error:" in lines[0] and "Traceback" not in captured.err
    return lines[0]
