#!/usr/bin/env bash
# Model-checks the lock-free protocols (device admission, activity tracking) with loom.
# Uses its own target directory: `--cfg parla_loom` changes the build of parla-core.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="--cfg parla_loom" LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}" \
  cargo test -p parla-core --lib --release --target-dir target/loom loom_test
