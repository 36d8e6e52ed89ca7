#!/bin/sh
# Runs every *.test.ts beside the code with node's own test runner.
# Setup first (idempotent, fast when everything is present) so a fresh clone needs nothing by hand.
set -e
cd "$(dirname "$0")/.."
sh scripts/setup.sh --quiet
# No spare machines unless a test asks for them (src/runtime/spare-pool.test.ts): a `run`'s
# background fill would start VMs in test homes that outlive the test.
export TORPOR_SPARE_MACHINES="${TORPOR_SPARE_MACHINES:-0}"
# No warm or paused tier unless a test asks for it (src/session/paused-tier.test.ts, serve's default
# in src/cli/serve-warm-memory.test.ts): `torpor serve` keeps hibernated sessions' QEMUs paused by
# default, and they outlive the server by design; a test home's would outlive the test.
export TORPOR_WARM_MEMORY="${TORPOR_WARM_MEMORY:-0}"
files=$(find src test examples -name '*.test.ts' -not -path '*/node_modules/*' 2>/dev/null | sort)
exec node --import tsx --test --test-concurrency=1 "$@" $files
