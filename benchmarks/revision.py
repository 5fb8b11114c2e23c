"""A module of this repository's package as it was at an earlier git revision (for benchmarks
that time old code against the current code in one process)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType


def module_at(revision: str, module: str, workdir: str) -> ModuleType:
    """``photodist.<module>`` as of git ``revision``, imported as ``<module>_reference``.

    The old source is written into ``workdir``; its own imports of other photodist modules
    resolve to the current package.
    """
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "show", f"{revision}:src/photodist/{module}.py"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if source.returncode:
        raise SystemExit(f"cannot read {module}.py at {revision!r}: {source.stderr.strip()}")
    name = f"{module}_reference"
    path = Path(workdir) / f"{name}.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location(name, path)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded  # dataclasses look their module up
    spec.loader.exec_module(loaded)
    return loaded
