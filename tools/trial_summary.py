"""
Run the trial suite and end with the plain line C{N passed, N failed} that CI reads.

A skipped test counts as failed: no test may skip (a missing peer is installed, never skipped).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

_COUNTS = re.compile(r"(\w+)=(\d+)")


def summarise(last_line: str) -> tuple[int, int]:
    """
    @param last_line: trial's closing line, such as C{FAILED (failures=1, successes=9)}.
    @return: how many passed and how many failed (failures, errors, unexpected successes, skips).
    """
    counts = {k: int(v) for k, v in _COUNTS.findall(last_line)}
    failed = sum(counts.get(k, 0) for k in ("failures", "errors", "unexpectedSuccesses", "skips"))
    return counts.get("successes", 0), failed


def main(argv: list[str]) -> int:
    """
    Run trial with C{argv} as its test names and print the summary line.

    @return: the exit status: 0 only when something ran and nothing failed or skipped.
    """
    jobs = os.environ.get("TRIAL_JOBS", str(min(os.cpu_count() or 1, 2)))
    command = [sys.executable, "-m", "twisted.trial", f"--jobs={jobs}", *argv]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, errors="replace")
    assert proc.stdout is not None
    last = ""
    for line in proc.stdout:
        sys.stdout.write(line)
        if line.startswith(("PASSED", "FAILED")):
            last = line
    status = proc.wait()
    passed, failed = summarise(last)
    if not last:
        failed += 1
    print(f"{passed} passed, {failed} failed")
    return 0 if status == 0 and failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
