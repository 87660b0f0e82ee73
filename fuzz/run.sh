#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each; pass another number of
# seconds as the first argument). New inputs the fuzzer finds go to a scratch directory, so
# the committed seeds in fuzz/corpus/<target>/ are only read; crashes land in
# fuzz/artifacts/<target>/. Needs nightly Rust and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
scratch="${OVL_FUZZ_SCRATCH:-$(mktemp -d -t ovl-fuzz-XXXXXX)}"
for target in client_hello api_request agent_to_controller controller_to_agent; do
    mkdir -p "$scratch/$target"
    echo "== $target for ${secs}s (new inputs in $scratch/$target)"
    cargo +nightly fuzz run -O "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$secs" -max_len=65536 -print_final_stats=1
done
