"""Run every benchmark and collect their figures into one Markdown table.

Usage: python benchmarks/run_all.py [--full] [--out benchmarks/RESULTS.md]
Each benchmark runs in its own process (``--quick`` unless ``--full``); its last output
line is its JSON figures. A benchmark that fails is listed with its exit code.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="full sizes (slow)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--only", nargs="*", help="benchmark names (file stems) to run")
    args = parser.parse_args()
    scripts = sorted(p for p in HERE.glob("*.py") if p.name != "run_all.py" and not p.name.startswith("_"))
    if args.only:
        scripts = [p for p in scripts if p.stem in args.only]
    sections = [f"# Benchmark results\n\nMachine: {platform.machine()}, "
                f"{platform.processor() or 'cpu'}; Python {platform.python_version()}; "
                f"mode: {'full' if args.full else 'quick'}; {time.strftime('%Y-%m-%d %H:%M')}.\n"]
    failed = 0
    for script in scripts:
        cmd = [sys.executable, str(script)] + ([] if args.full else ["--quick"])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
        sections.append(f"## {script.stem}\n\n`{' '.join(['python', 'benchmarks/' + script.name] + cmd[2:])}`"
                        f" — {seconds:.0f} s, exit {proc.returncode}\n")
        try:
            figures = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
        except json.JSONDecodeError:
            figures = None
        if figures is None:
            failed += 1
            tail = (proc.stderr or proc.stdout)[-800:]
            sections.append(f"failed:\n\n```text\n{tail}\n```\n")
            continue
        rows = "\n".join(f"| `{k}` | {v} |" for k, v in figures.items())
        sections.append(f"| figure | value |\n|---|---|\n{rows}\n")
        print(f"{script.stem}: ok ({seconds:.0f} s)", file=sys.stderr)
    args.out.write_text("\n".join(sections))
    print(json.dumps({"benchmarks": len(scripts), "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
