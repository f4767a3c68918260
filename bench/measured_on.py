"""What a benchmark's figures were measured on: shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime


def measured_on() -> dict[str, str]:
    """Date, CPU (model and cores), load average and Python of this machine, now."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "load": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        "python": platform.python_version(),
    }
