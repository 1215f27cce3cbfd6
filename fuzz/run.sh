#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS seconds (default 60), starting from the
# committed seeds in fuzz/seeds/<target>/ (new inputs go to fuzz/corpus/<target>/, not tracked).
# Exits non-zero as soon as a target finds a crash, a hang or an oversized allocation; the input
# is saved under fuzz/artifacts/<target>/.
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
targets=(fused_vs_reference load_bytes tape_api simd_math)

# cargo-fuzz sets RUSTFLAGS itself, which hides .cargo/config.toml: ask for the same CPU so the
# SIMD kernels take the paths a normal build takes.
export RUSTFLAGS="${RUSTFLAGS:-} -C target-cpu=native"

cargo +nightly fuzz build
for t in "${targets[@]}"; do
    echo "== fuzz $t for ${seconds}s"
    mkdir -p "fuzz/corpus/$t"
    cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 \
        -print_final_stats=1
done
echo "== fuzz: no findings"
