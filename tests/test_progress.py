"""Progress a person can watch, and a command line that answers at once (issue 17).

The CLI is run in a subprocess with its output to a pipe, as in a cluster job (`> train.log`): there is no terminal,
so progress comes as plain lines, counted here. Startup speed is asserted by what is imported, never by a clock."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "numpy", "tokenizers", "kornia", "transformers", "sklearn", "matplotlib", "safetensors", "PIL")


def imported_by(*argv: str) -> list[str]:
    """The heavy modules loaded by `selfsup ARGV` (run through cli.main in a fresh process), and its exit status."""
    code = ("import sys\nfrom selfsup.cli import main\nsys.argv = ['selfsup', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            f"print('heavy', sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    return proc.stdout.splitlines()[-2:] + [proc.stderr.strip()]


def test_help_recipes_and_config_errors_import_nothing_heavy():
    assert imported_by("--help")[-2] == "heavy []"
    assert imported_by("recipes")[-2] == "heavy []"
    assert imported_by("train", "--help")[-2] == "heavy []"
    exit_line, heavy, stderr = imported_by("train", "gpt-clm", "model.dimm=3")
    assert (exit_line, heavy) == ("exit 2", "heavy []")
    assert stderr == "error: unknown config key 'model.dimm' (did you mean 'model.dim'?)"


def test_an_error_of_a_heavy_module_is_still_one_line(tmp_path):
    """RunDirError lives in rundir.py (torch): the CLI finds it once the command has imported it."""
    proc = subprocess.run([sys.executable, "-m", "selfsup", "export", str(tmp_path), "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith(f"error: '{tmp_path}' is not a run directory")
