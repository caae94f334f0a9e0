#!/usr/bin/env bash
# The tests marked `slow`, left out of the README's test command (which CI runs within its 12-minute budget): every
# variant of every solver in the sweeps (tests/sweep.py), asymptotic and weak orders on fine grids, multi-device
# training against one device, the larger smoke runs. From the repository root:
#     bash scripts/test_slow.sh            # every slow test, in two worker processes
#     bash scripts/test_slow.sh -k order   # any further pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q -n 2 --dist loadfile -m slow "$@"
