"""The layer contract: imports point one way (command line > flows > stages | demo world > data contract > core).

The contracts live in pyproject.toml ([tool.importlinter]); `lint-imports` checks them statically, so this
test fails the moment a module imports upward, two packages import each other, or two modules of a package
form a cycle, whether the import sits at the top of a module or inside a function.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_layer_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "4 kept, 0 broken" in proc.stdout


def test_no_package_import_cycle_and_no_first_party_import_inside_a_function():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "package_cycles.py"), str(ROOT)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout
    assert "package pairs in an import cycle: 0" in proc.stdout
    assert "first-party imports inside functions: 0" in proc.stdout
