#!/usr/bin/env bash
# Instructions per task of parla-rs and of plain Tokio on the graphs of `benches/overhead.rs`,
# counted by `valgrind --tool=callgrind` in the same run.
#
#   benches/callgrind.sh                          # every graph, 2 worker threads
#   benches/callgrind.sh --graphs "chain wavefront" --threads 4
#   benches/callgrind.sh --bin target/release/deps/overhead-<hash>
#
# Each implementation (parla, and Tokio's two ways: see overhead.rs) runs each graph alone,
# once at scale 0.1 and once at scale 0.2. The figure is the difference in instructions
# divided by the difference in tasks: what one more task costs, without the runtime's start
# and shutdown. Callgrind runs one thread at a time, so the spawning thread runs ahead of
# the workers more than it would on a real machine. The counts move by a few percent from
# run to run (the threads' interleaving decides which paths tasks take), wall times by tens.
set -euo pipefail
cd "$(dirname "$0")/.."

graphs="independent chain reduction wavefront wavefront-h"
threads=2
bin=""
while [ $# -gt 0 ]; do
    case "$1" in
        --graphs) graphs="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "callgrind.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done

command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 1; }
if [ -z "$bin" ]; then
    # The benchmark's executable, from the artifact cargo reports for it.
    bin=$(cargo bench --bench overhead --no-run --message-format=json 2>/dev/null \
        | grep '"kind":\["bench"\]' | grep '"name":"overhead"' \
        | grep -o '"executable":"[^"]*"' | tail -1 | sed 's/"executable":"\(.*\)"/\1/')
    [ -n "$bin" ] || { echo "callgrind.sh: could not build benches/overhead.rs" >&2; exit 1; }
fi
[ -x "$bin" ] || { echo "callgrind.sh: $bin is not an executable" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# count IMPL GRAPH SCALE: prints "TASKS INSTRUCTIONS".
count() {
    local log="$out/$1-$2-$3.log"
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" --only "$1" --graph "$2" \
        --scale "$3" --threads "$threads" >"$log" 2>&1 || {
        echo "callgrind.sh: $1 $2 at scale $3 failed:" >&2
        grep -v "^==" "$log" | tail -5 >&2
        exit 1
    }
    local tasks instr
    tasks=$(grep -o ': [0-9]* tasks' "$log" | head -1 | tr -dc '0-9')
    instr=$(grep -o 'refs: *[0-9,]*' "$log" | tr -dc '0-9')
    echo "$tasks $instr"
}

# per_task IMPL GRAPH: instructions per task, scale 0.2 against 0.1 (run side by side).
per_task() {
    count "$1" "$2" 0.1 >"$out/a" &
    count "$1" "$2" 0.2 >"$out/b"
    wait $!
    read -r ta ia <"$out/a"
    read -r tb ib <"$out/b"
    echo $(((ib - ia) / (tb - ta)))
}

printf "instructions per task (callgrind, %s worker threads)\n" "$threads"
printf "%-12s %8s %8s %8s %22s\n" graph parla tokio-a tokio-b "parla / faster Tokio"
for g in $graphs; do
    p=$(per_task parla "$g")
    a=$(per_task tokio-a "$g")
    b=$(per_task tokio-b "$g")
    best=$((a < b ? a : b))
    printf "%-12s %8d %8d %8d %22s\n" "$g" "$p" "$a" "$b" \
        "$(awk -v p="$p" -v t="$best" 'BEGIN { printf "%.2f", p / t }')"
done
