# Sourced by scripts that need a real mesh: `start_mesh <port base> <name>`
# builds the CLI and runs `capsule dev` in the background with the gateway's
# REST port on <base>80, its gRPC port on <base>50 and the services on
# <base>51..53, over databases usecapsule_<name>_{auth,project,deploy}; it
# returns once the gateway is ready (or fails, showing the log) and stops
# the mesh when the script exits. MESH_URL is the REST address. With a
# third argument `fresh`, those databases are dropped first: a scratch
# mesh starts from nothing, whatever an earlier run left.
start_mesh() {
    local base=$1 name=$2 fresh=${3:-}
    cargo build --quiet --locked -p capsule-cli
    if [ "$fresh" = fresh ]; then
        local admin
        admin=$("${CARGO_TARGET_DIR:-target}/debug/capsule" postgres up)
        for kind in auth project deploy; do
            PGOPTIONS="-c client_min_messages=warning" psql "$admin" -qc "DROP DATABASE IF EXISTS \"usecapsule_${name}_${kind}\" WITH (FORCE)"
        done
    fi
    export GATEWAY_HTTP_ADDR=127.0.0.1:${base}80 GATEWAY_GRPC_ADDR=127.0.0.1:${base}50
    export AUTH_GRPC_ADDR=127.0.0.1:${base}51 PROJECT_GRPC_ADDR=127.0.0.1:${base}52 DEPLOY_GRPC_ADDR=127.0.0.1:${base}53
    export AUTH_SERVICE_URL=http://127.0.0.1:${base}51 PROJECT_SERVICE_URL=http://127.0.0.1:${base}52
    export DEPLOY_SERVICE_URL=http://127.0.0.1:${base}53
    export AUTH_DB_NAME=usecapsule_${name}_auth PROJECT_DB_NAME=usecapsule_${name}_project
    export DEPLOY_DB_NAME=usecapsule_${name}_deploy
    export RUST_LOG=warn
    MESH_URL=http://127.0.0.1:${base}80
    MESH_LOG=$(mktemp)
    "${CARGO_TARGET_DIR:-target}/debug/capsule" dev >"$MESH_LOG" 2>&1 &
    MESH_PID=$!
    trap 'kill $MESH_PID 2>/dev/null; wait $MESH_PID 2>/dev/null || true' EXIT
    for _ in $(seq 1 100); do
        curl -fs "$MESH_URL/readyz" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    cat "$MESH_LOG"
    echo "the mesh did not become ready" >&2
    exit 1
}
