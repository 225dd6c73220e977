"""What the journey tests share: the real `bifrost` executable, run as a user runs it, in a home of the test's own."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bifrost as _pkg

BIN = Path(sys.executable).parent
SAMPLE = Path(_pkg.__file__).parent / "sample"


def env_for(home: Path) -> dict[str, str]:
    "A user's environment: the venv's commands on PATH, Bifrost's home set, no store URL or run id inherited."
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIFROST_")}
    return {**env, "BIFROST_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}


def bifrost(home: Path, *args: str, ok: bool = True, timeout: float = 600, cwd: Path | None = None):
    "Run `bifrost ARGS` in a subprocess; never a traceback, and exit 0 unless `ok=False`."
    r = subprocess.run([str(BIN / "bifrost"), *args], env=env_for(home), cwd=cwd or home, capture_output=True,
                       text=True, timeout=timeout)
    assert "Traceback" not in r.stdout + r.stderr, f"bifrost {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    if ok:
        assert r.returncode == 0, f"bifrost {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r
