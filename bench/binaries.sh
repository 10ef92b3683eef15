# Sourced by the shell benchmarks: builds `capsule` and the benchmark
# binaries (release; BENCH_PROFILE=dev takes the debug build, for CI's
# smoke runs), sets BIN to their folder and CAPSULE_BIN, and finds or
# starts PostgreSQL when CAPSULE_TEST_DATABASE_URL is unset.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${BENCH_PROFILE:-release}" = dev ]; then
    cargo build --locked -q -p capsule-cli -p capsule-bench
    BIN="${CARGO_TARGET_DIR:-target}/debug"
else
    # One package per build, as `capsule` ships: built together they would
    # share their dependencies' features, and the binary's symbols would
    # miss the order it is linked in (services/capsule/link-order.txt).
    cargo build --release --locked -q -p capsule-cli
    cargo build --release --locked -q -p capsule-bench
    BIN="${CARGO_TARGET_DIR:-target}/release"
fi
export CAPSULE_BIN="$BIN/capsule"
if [ -z "${CAPSULE_TEST_DATABASE_URL:-}" ]; then
    CAPSULE_TEST_DATABASE_URL="$("$CAPSULE_BIN" postgres up)"
    export CAPSULE_TEST_DATABASE_URL
fi
