"""What every benchmark prints: a Methodology block first, one JSON object as the last line."""

from __future__ import annotations

import json
import os
import platform
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        rustc = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "rustc": rustc,
    }


def methodology(name: str, workload: dict[str, Any], settings: dict[str, Any]) -> None:
    print(f"== Methodology: {name}")
    for key, value in machine().items():
        print(f"  machine.{key}: {value}")
    for key, value in workload.items():
        print(f"  workload.{key}: {value}")
    for key, value in settings.items():
        print(f"  settings.{key}: {value}")


def finish(name: str, figures: dict[str, Any]) -> None:
    """Writes the figures to benches/results/<name>.json and prints them as the last line."""
    RESULTS.mkdir(exist_ok=True)
    line = json.dumps(figures, sort_keys=True)
    (RESULTS / f"{name}.json").write_text(line + "\n")
    print(line)


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def dir_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the regular files under `path` (symbolic links not followed); 0 if `path` does not exist.

    Walked while the system that owns the files may still be running: a file or directory that vanishes during the
    walk (a merge or compaction removing its temporary parts, a WAL file recycled) is not counted, instead of ending
    the benchmark and losing its figures. Every benchmark measures disk use with this one function.
    """
    total = 0
    pending = [os.fspath(path)]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as entries:
                listed = list(entries)
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed (or replaced) since its parent was listed
        for entry in listed:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                pending.append(entry.path)
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def memory_kib(pid: int | str, field: str) -> int:
    """`VmRSS` (now) or `VmHWM` (peak) of a process, in KiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
