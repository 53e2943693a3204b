#!/usr/bin/env bash
# Model-checks the concurrent protocols with loom: device admission (task and resume lanes,
# an abort against queuers, releases and lenders),
# CPU tasks keeping their VCUs while they wait (the handshake with queued tasks),
# activity words (park, wake, outside clones, an abort against a poll), node state and
# links (publish vs register, readiness, the join protocol), the driver/injector handshake,
# taking turns at serving a queue (data admission), a `block_on` waiting for the live
# count to reach zero (its registration against the zero), the free-slot set of GPU stream
# pools, and freeing a chunk of task memory once its blocks and its cutting thread let go.
# Uses its own target directory: `--cfg parla_loom` changes the build of parla-core.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="--cfg parla_loom" LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}" \
  cargo test -p parla-core --lib --release --target-dir target/loom loom_test
