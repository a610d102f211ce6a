"""Machine keys: what must match for a stored result to be compared with this run (like with like)."""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

KEY_FIELDS = ("device", "hardware", "world_size", "nodes", "precision", "threads_per_rank", "pinned", "versions",
              "fingerprint", "steps")


def hardware_name(hardware: Mapping[str, Any]) -> str:
    """GPU name and count where the ranks ran on GPUs, else CPU model, torch's kernel instruction set and count."""
    if hardware.get("gpu"):
        return f"{hardware.get('gpu_count', 1)}× {hardware['gpu']}"
    return (f"{hardware.get('cpu', '?')}, {hardware.get('cpu_capability', 'instruction set not recorded')} "
            f"({hardware.get('cpu_count', '?')} CPUs)")


def machine_kind(extra_info: Mapping[str, Any]) -> tuple[Any, str]:
    """(device, hardware name) of a stored result: the runs a host is judged against are those of its kind."""
    return extra_info.get("device"), hardware_name(extra_info.get("hardware", {}))


def this_machine_kind(device: str) -> tuple[str, str]:
    """(device, hardware name) of this host for ``device`` (auto, cpu or cuda), as ``machine_kind`` reads a result."""
    from parabench.runtime.env import device_type, hardware

    chosen = device_type(device)
    return chosen, hardware_name(hardware(chosen))


def machine_key(extra_info: Mapping[str, Any], fields: Sequence[str] = KEY_FIELDS,
                ignore_packages: Sequence[str] = ()) -> dict[str, Any]:
    """The key of one stored benchmark (its ``extra_info``), restricted to ``fields``."""
    case = extra_info["case"]
    versions = dict(extra_info.get("versions", {}))
    if "python" in versions:  # a patch release does not move results; a minor one may
        versions["python"] = ".".join(versions["python"].split(".")[:2])
    values = {
        "device": extra_info.get("device"),
        "hardware": hardware_name(extra_info.get("hardware", {})),
        "world_size": extra_info.get("world_size", case.get("world_size")),
        # Ranks spread over several machines (a torchrun or srun launch) step at another pace than on one.
        "nodes": extra_info.get("launch", {}).get("nodes", 1),
        "precision": case.get("precision"),
        "threads_per_rank": extra_info.get("threads_per_rank"),
        "pinned": extra_info.get("pinned", False),
        "versions": {name: v for name, v in sorted(versions.items()) if name not in ignore_packages},
        "fingerprint": extra_info.get("fingerprint"),
        "steps": f"{case.get('warmup_steps')} warm-up + {case.get('steps')} measured",
    }
    unknown = set(fields) - set(values)
    if unknown:
        raise ValueError(f"unknown key fields {sorted(unknown)}; known: {', '.join(KEY_FIELDS)}")
    return {field: values[field] for field in fields}


def key_differences(stored: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Readable differences, e.g. ``hardware: Intel Xeon (4 CPUs) (stored) vs AMD EPYC (2 CPUs) (now)``."""
    out = []
    for field in sorted(set(stored) | set(now)):
        a, b = stored.get(field), now.get(field)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            parts = [f"{name} {a.get(name, '—')} vs {b.get(name, '—')}" for name in sorted(set(a) | set(b))
                     if a.get(name) != b.get(name)]
            out.append(f"{field}: " + ", ".join(parts) + " (stored vs now)")
        else:
            out.append(f"{field}: {a} (stored) vs {b} (now)")
    return out


def slug(extra_info: Mapping[str, Any]) -> str:
    """A file-name-safe name of the machine class, e.g. ``cpu-amd_epyc-2cpus``."""
    hardware = extra_info.get("hardware", {})
    if hardware.get("gpu"):
        parts = ["cuda", hardware["gpu"], f"x{hardware.get('gpu_count', 1)}"]
    else:
        parts = ["cpu", hardware.get("cpu", "unknown"), *([hardware["cpu_capability"]] if "cpu_capability" in hardware
                                                          else []), f"{hardware.get('cpu_count', 0)}cpus"]
    return "-".join(re.sub(r"[^a-z0-9.]+", "_", str(part).lower()).strip("_") for part in parts)
