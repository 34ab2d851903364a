"""What the differential tests share: the failures seen so far, a check that records one, and
the exit that reports them (imported from the test's own folder, which Python puts on its path)."""

import sys

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def exit_if_failed(detail=""):
    """Exits 1 with the number of failures (and `detail`) where there were any."""
    if failures:
        print(f"{len(failures)} failures{detail}")
        sys.exit(1)
