"""Where a measured number comes from: stamped into every result file a bench script writes.

    from provenance import Provenance
    stamp = Provenance.start(__file__)      # before the work: the load before it
    ...
    out = {"provenance": stamp.finish(), ...}  # after it: the load after, the seconds between

The stamp names the script and its arguments, the commit (and whether the tree had uncommitted
changes), the machine (CPU model, cores, torch threads, GPU if any, Python/torch/transformers), and
the 1-minute load average before and after: on a 2-core machine a second heavy job doubles or
triples a timing, so a figure without its load cannot be read.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str, root: Path = ROOT) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def commit(root: Path = ROOT) -> dict:
    """A checkout's commit (this one's by default) and whether tracked files differed from it."""
    status = _git("status", "--porcelain", "--untracked-files=no", root=root)
    return {"commit": _git("rev-parse", "HEAD", root=root),
            "uncommitted_changes": bool(status) if status is not None else None}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What ran it: CPU, cores, torch threads, accelerator and library versions."""
    info: dict = {"host": platform.node(), "cpu": _cpu_model(), "cores": os.cpu_count(),
                  "python": platform.python_version()}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    transformers = sys.modules.get("transformers")
    if transformers is not None:
        info["transformers"] = transformers.__version__
    return info


def load() -> list[float]:
    """1-, 5- and 15-minute load averages (number of runnable processes; 2 = this machine's cores busy)."""
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class Provenance:
    script: str
    argv: list[str]
    started: str
    load_before: list[float]
    _t0: float = field(default=0.0, repr=False)

    @classmethod
    def start(cls, script: str) -> "Provenance":
        return cls(script=str(Path(script).resolve().relative_to(ROOT)) if Path(script).resolve().is_relative_to(ROOT)
                   else str(script), argv=sys.argv[1:], started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   load_before=load(), _t0=time.perf_counter())

    def finish(self) -> dict:
        """The stamp, with the load after the work and the wall seconds since :meth:`start`."""
        return {"script": self.script, "argv": self.argv, **commit(), "machine": machine(), "started": self.started,
                "wall_seconds": round(time.perf_counter() - self._t0, 1), "load_before": self.load_before,
                "load_after": load()}
