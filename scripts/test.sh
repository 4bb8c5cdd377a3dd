#!/usr/bin/env bash
# Set up (if needed) and run the test suite; exit code 5 (no tests collected) counts as failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
# Two worker processes (pytest-xdist): most tests run on one core each (the Playground ones
# spend their time in XLA's single-threaded compiler), so two cores take about half the time.
# Work stealing keeps both busy to the end. TEST_WORKERS=0 runs everything in this process.
.venv/bin/python -m pytest -q -m "not slow" -n "${TEST_WORKERS:-2}" --dist worksteal "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
