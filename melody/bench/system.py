"""What the harness reads from the operating system: CPU time, RSS, pinning, limits, versions.

Linux only for the ``/proc`` readers (CPU time and RSS of another process); elsewhere they
return None and the figures that need them are reported as unavailable, never guessed.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

__all__ = [
    "CLK_TCK",
    "cpu_seconds",
    "machine_busy_seconds",
    "rss_kib",
    "raise_nofile",
    "parse_cpus",
    "format_cpus",
    "pin",
    "renice",
    "environment",
    "package_version",
]

# utime and stime in /proc/<pid>/stat are in clock ticks (USER_HZ, 100 on every Linux build
# that matters); sysconf gives the real value.
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by ``pid`` (all its threads), from /proc/<pid>/stat.

    None when the process is gone or /proc is not there. Resolution is one clock tick (10 ms).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or ")": split
    # after the last ")". utime and stime are fields 14 and 15, so 11 and 12 after it.
    fields = raw[raw.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float | None:
    """User + nice + system CPU seconds of the whole machine (all CPUs) so far, or None.

    From the first line of /proc/stat. Interrupt and softirq time are left out, as they are
    left out of every process's own time: the difference between this and the CPU time of the
    processes a benchmark knows is what everything else on the machine used.
    """
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu":
        return None
    return (int(fields[1]) + int(fields[2]) + int(fields[3])) / CLK_TCK


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (VmRSS of /proc/<pid>/status); None if unavailable."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def raise_nofile(want: int | None = None) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return ``(soft, hard)`` afterwards.

    Each client connection is one file descriptor: 10,000 connections need more than the usual
    soft limit of 1,024, and only the hard limit is a real ceiling for an unprivileged process.
    With ``want`` above the hard limit, the hard limit is raised too (to ``want``, at most
    ``fs.nr_open``) where the process may (root, or CAP_SYS_RESOURCE): 100,000 connections
    need more than the 20,000 or 65,536 a system typically allows. Where it may not, the
    limits stay as they were, and the caller reports the shortfall.
    """
    try:
        import resource
    except ImportError:  # not on Windows
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            nr_open = int(f.read())
    except (OSError, ValueError):
        nr_open = 1 << 20
    if hard == resource.RLIM_INFINITY:
        # Linux refuses an infinite soft limit for files; nr_open is the real ceiling.
        hard_value = nr_open
    else:
        hard_value = hard
    if want is not None and want > hard_value and hard != resource.RLIM_INFINITY:
        target = min(want, nr_open)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return resource.getrlimit(resource.RLIMIT_NOFILE)
        except (ValueError, OSError):
            pass  # unprivileged: the soft limit can still go up to the hard one
    if soft == resource.RLIM_INFINITY or soft >= hard_value:
        return (soft, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard_value, hard))
    except (ValueError, OSError):
        pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def parse_cpus(text: str) -> list[int]:
    """``"1"``, ``"1,3"``, ``"0-3"`` or ``"0-1,4"`` as a sorted list of CPU numbers.

    Raises ValueError for anything else, or for an empty set.
    """
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if sep:
            first, last = int(lo), int(hi)
            if first > last:
                raise ValueError(f"CPU range {part!r} is backwards")
            cpus.update(range(first, last + 1))
        else:
            cpus.add(int(part))
    if not cpus or min(cpus) < 0:
        raise ValueError(f"no CPUs in {text!r}")
    return sorted(cpus)


def format_cpus(cpus: list[int] | None) -> str:
    """The inverse of :func:`parse_cpus` (ranges collapsed); ``"-"`` for None."""
    if not cpus:
        return "-"
    out: list[str] = []
    start = prev = cpus[0]
    for c in [*cpus[1:], -2]:
        if c == prev + 1:
            prev = c
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = c
    return ",".join(out)


def pin(pid: int, cpus: list[int] | None) -> bool:
    """Restrict ``pid`` (0: this process) to ``cpus``; False where affinity is unsupported."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(pid, cpus)
    except OSError:
        return False
    return True


def renice(pid: int, nice: int | None) -> bool:
    """Set the nice value of ``pid`` (0: this process); False when not permitted or None.

    A negative value (root only) gives the benchmark's processes a larger share of their
    cores than the other processes of a shared machine: the scheduler weighs nice -10 about
    ten times nice 0. The value is reported with the figures.
    """
    if nice is None or not hasattr(os, "setpriority"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    except OSError:
        return False
    return True


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    if name == "melody":
        # A source checkout used in place (``pip install -e`` or PYTHONPATH) may not be a
        # distribution at all: the package's own version is the truth.
        try:
            import melody

            return str(melody.__version__)
        except ImportError:
            return None
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_kib() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def environment() -> dict[str, Any]:
    """The machine and software a run was measured on, for the JSON report."""
    compiled = None
    try:
        import melody

        compiled = bool(melody.COMPILED)
    except ImportError:
        pass
    sysctls: dict[str, str] = {}
    for name in ("net/core/somaxconn", "net/ipv4/ip_local_port_range", "net/ipv4/tcp_tw_reuse"):
        try:
            with open(f"/proc/sys/{name}") as f:
                sysctls[name.replace("/", ".")] = " ".join(f.read().split())
        except OSError:
            pass
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "mem_total_kib": _mem_total_kib(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "melody_compiled": compiled,
        "versions": {
            name: package_version(name)
            for name in ("melody", "picows", "websockets", "aiohttp", "uvloop", "wsproto")
        },
        "sysctl": sysctls,
    }
