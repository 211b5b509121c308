"""How every benchmark reports: a table of ratios (or JSON) with the machine it ran on."""

from __future__ import annotations

import compileall
import importlib.util
import json
import os
import platform
import sys


def write_bytecode_cache() -> None:
    """Compile hvsock's bytecode cache, as pip does when it installs a wheel and as
    Python does on a first run anywhere ``PYTHONDONTWRITEBYTECODE`` is unset (this
    machine sets it). Every benchmark that starts ``hvsock`` processes calls this
    first: the standard library reads its cached bytecode, so without it each hvsock
    process would compile its own source while its baseline does not."""
    spec = importlib.util.find_spec("hvsock")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("hvsock is not importable: install it first (pip install -e .)")
    for folder in spec.submodule_search_locations:
        if not compileall.compile_dir(folder, quiet=1):
            raise SystemExit(f"could not write the bytecode cache under {folder}")


def machine() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
    }


def row(
    figure: str, unit: str, ours: float, base: float, baseline: str, target: str = ""
) -> dict[str, object]:
    return {
        "figure": figure,
        "unit": unit,
        "hvsock": round(ours, 2),
        "baseline": round(base, 2),
        "baseline_is": baseline,
        "ratio": round(ours / base, 3),
        "target": target,
    }


def emit(rows: list[dict[str, object]], as_json: bool) -> None:
    if as_json:
        json.dump({"machine": machine(), "rows": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print(f"machine: {machine()}")
    width = max(len(str(r["figure"])) for r in rows) + 1
    print(
        f"{'figure':<{width}} {'hvsock':>10} {'baseline':>10} {'ratio':>6}  unit; baseline; target"
    )
    for r in rows:
        print(
            f"{r['figure']!s:<{width}} {r['hvsock']!s:>10} {r['baseline']!s:>10} "
            f"{r['ratio']!s:>6}  {r['unit']}; {r['baseline_is']}; {r['target'] or '-'}"
        )
