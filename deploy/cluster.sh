#!/usr/bin/env bash
# Three `pacs serve` nodes (or PACS_CLUSTER_NODES) on this machine, on loopback with their own
# ports, sharing one PostgreSQL database and (with PACS_CLUSTER_S3=moto) one S3 object store, with HAProxy
# (deploy/haproxy.cfg) in front. For trying a cluster out; see "Several nodes" in README.md.
#
#   deploy/cluster.sh start [DIR]      nodes, then HAProxy; prints the addresses
#   deploy/cluster.sh stop [DIR]       HAProxy, then the nodes (SIGTERM: messages in flight finish)
#   deploy/cluster.sh status [DIR]     each node's /healthz, through HAProxy too
#   deploy/cluster.sh kill N [DIR]     SIGKILL node N (1-3), as a machine that dies
#   deploy/cluster.sh restart N [DIR]  start node N again
#
# DIR (default ./pacs-cluster) holds each node's data folder and log, HAProxy's log, the shared
# session key, the pid files, and cluster.env (the database, ports and object store `start` used, for the
# other commands).
#
# Environment:
#   PACS_DATABASE_URL    the shared database (default postgresql://postgres@127.0.0.1:5432/pacs_cluster,
#                        created when missing)
#   PACS_CLUSTER_PORT    first port (default 24000): HAProxy takes PORT (DICOM), PORT+1 (MLLP) and
#                        PORT+2 (HTTP); node N takes PORT+10N, PORT+10N+1 and PORT+10N+2
#   PACS_BIN             the pacs command (default: pacs on PATH, else this checkout's .venv/bin/pacs)
#   HAPROXY              the haproxy command (default haproxy; Debian: apt-get install haproxy)
#   PACS_CLUSTER_S3      "moto": start moto's S3 server (moto_server, from `pip install
#                        'moto[server]'`, the test extras) on 127.0.0.1:PORT+3 and give every node
#                        the storage area "online" in its bucket "pacs-cluster", with
#                        [archive] acknowledge = "indexed": each object a node acknowledges is then
#                        in the shared store and indexed, and any node serves it. moto keeps the
#                        objects in memory: `stop` ends it and they are gone (the index stays).
#                        Unset: each node keeps objects in its own data folder (or give the nodes
#                        an S3 area of your own in PACS_CONFIG).
#   PACS_CLUSTER_NODES   how many nodes (1-3, default 3); HAProxy is given a copy of
#                        deploy/haproxy.cfg (DIR/haproxy.cfg) without the other nodes' server lines
#   MOTO_SERVER          the moto_server command (default: on PATH, else this checkout's .venv)
#   PACS_CONFIG, PACS_ADMIN_PASSWORD, ... are passed on to every node.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
command="${1:-}"
case "$command" in
    kill|restart) node="${2:?which node (1-3)?}"; dir="${3:-./pacs-cluster}" ;;
    start|stop|status) dir="${2:-./pacs-cluster}" ;;
    *) sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

# what `start` was given is kept for the other commands (unless they are given something else)
if [[ -f "$dir/cluster.env" ]]; then . "$dir/cluster.env"; fi
export PACS_DATABASE_URL="${PACS_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/pacs_cluster}"
port="${PACS_CLUSTER_PORT:-24000}"
pacs="${PACS_BIN:-$(command -v pacs || echo "$here/../.venv/bin/pacs")}"
haproxy="${HAPROXY:-haproxy}"
s3="${PACS_CLUSTER_S3:-}"
nodes="${PACS_CLUSTER_NODES:-3}"
[[ "$nodes" =~ ^[123]$ ]] || { echo "PACS_CLUSTER_NODES=$nodes: 1, 2 or 3" >&2; exit 2; }
moto="${MOTO_SERVER:-$(command -v moto_server || echo "$here/../.venv/bin/moto_server")}"
export PACS_AUTH__SECRET_KEY_FILE="$dir/session.key"  # one key: a session cookie works on every node

node_port() { echo $((port + 10 * $1 + $2)); }  # node, 0 DICOM / 1 MLLP / 2 HTTP

healthy() { curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$1/healthz"; }

wait_healthy() {  # HTTP port, seconds[, pid file of the process that must keep running]
    for _ in $(seq $(($2 * 5))); do
        healthy "$1" && return 0
        if [[ -n "${3:-}" ]] && ! running "$3"; then return 1; fi
        sleep 0.2
    done
    return 1
}

running() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

s3_url() { echo "http://127.0.0.1:$((port + 3))"; }

s3_env() {  # the nodes' shared storage area, in the environment (over any PACS_CONFIG's areas)
    case "$s3" in
    "") return ;;
    moto) ;;
    *) echo "PACS_CLUSTER_S3=$s3: only \"moto\" is known" >&2; exit 2 ;;
    esac
    export PACS_STORAGE__AREAS="[{\"name\": \"online\", \"kind\": \"s3\", \"bucket\": \"pacs-cluster\",
        \"endpoint_url\": \"$(s3_url)\", \"access_key\": \"cluster\", \"secret_key\": \"cluster\",
        \"region\": \"us-east-1\"}]"
    export PACS_STORAGE__WRITE='["online"]' PACS_STORAGE__CACHE=online PACS_ARCHIVE__ACKNOWLEDGE=indexed
}

start_moto() {
    [[ "$s3" == moto ]] || return 0
    if running "$dir/moto.pid"; then return; fi
    [[ -x "$moto" ]] || { echo "moto_server not found (pip install 'moto[server]')" >&2; exit 1; }
    setsid "$moto" -H 127.0.0.1 -p $((port + 3)) >>"$dir/moto.log" 2>&1 </dev/null &
    echo $! >"$dir/moto.pid"
    for _ in $(seq 150); do
        curl -fs -o /dev/null --max-time 2 "$(s3_url)" && { echo "S3 (moto): $(s3_url)"; return; }
        running "$dir/moto.pid" || break
        sleep 0.2
    done
    echo "moto_server did not start; see $dir/moto.log" >&2
    exit 1
}

s3_env

create_database() {
    local base="${PACS_DATABASE_URL%/*}" name="${PACS_DATABASE_URL##*/}"
    name="${name%%\?*}"
    if ! psql "$base/postgres" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1; then
        psql "$base/postgres" -qc "CREATE DATABASE \"$name\""
        echo "created database $name"
    fi
}

start_node() {
    local n="$1"
    local pidfile="$dir/node$n.pid"
    if running "$pidfile"; then echo "node $n already runs (pid $(cat "$pidfile"))"; return; fi
    mkdir -p "$dir/node$n"
    PACS_AE_TITLE="${PACS_AE_TITLE:-PACS}" setsid "$pacs" serve --host 127.0.0.1 --data-dir "$dir/node$n/data" \
        --dicom-port "$(node_port "$n" 0)" --mllp-port "$(node_port "$n" 1)" --http-port "$(node_port "$n" 2)" \
        >>"$dir/node$n/serve.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    if ! wait_healthy "$(node_port "$n" 2)" 120 "$pidfile"; then
        echo "node $n did not become healthy; see $dir/node$n/serve.log" >&2
        return 1
    fi
    echo "node $n: DICOM 127.0.0.1:$(node_port "$n" 0)  MLLP :$(node_port "$n" 1)  HTTP :$(node_port "$n" 2)"
}

haproxy_env() {
    export PACS_BIND=127.0.0.1 PACS_DICOM_PORT="$port" PACS_MLLP_PORT=$((port + 1)) PACS_HTTP_PORT=$((port + 2))
    for n in 1 2 3; do
        export "PACS_NODE$n=127.0.0.1" "PACS_NODE${n}_DICOM=$(node_port "$n" 0)"
        export "PACS_NODE${n}_MLLP=$(node_port "$n" 1)" "PACS_NODE${n}_HTTP=$(node_port "$n" 2)"
    done
}

stop_pid() {  # pid file, signal
    local pidfile="$1" pid
    running "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid="$(cat "$pidfile")"
    kill "-$2" "$pid" 2>/dev/null || true
    for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    rm -f "$pidfile"
}

case "$command" in
start)
    command -v "$haproxy" >/dev/null || { echo "haproxy not found (Debian: apt-get install haproxy)" >&2; exit 1; }
    create_database
    printf ': "${PACS_DATABASE_URL:=%s}"\n: "${PACS_CLUSTER_PORT:=%s}"\n: "${PACS_CLUSTER_S3:=%s}"\n' \
        "$PACS_DATABASE_URL" "$port" "$s3" >"$dir/cluster.env"
    printf ': "${PACS_CLUSTER_NODES:=%s}"\n' "$nodes" >>"$dir/cluster.env"
    start_moto
    start_node 1  # the first node alone: it brings the schema up to date
    starters=()
    for n in $(seq 2 "$nodes"); do start_node "$n" & starters+=($!); done
    for pid in "${starters[@]}"; do wait "$pid"; done
    haproxy_env
    # the nodes that run, and no others: a server line per node up to PACS_CLUSTER_NODES
    awk -v nodes="$nodes" '!(/^ *server node[0-9]+ / && substr($2, 5) + 0 > nodes)' \
        "$here/haproxy.cfg" >"$dir/haproxy.cfg"
    if ! running "$dir/haproxy.pid"; then
        # in the foreground, so that its log (one line a connection or request) goes to a file
        setsid "$haproxy" -f "$dir/haproxy.cfg" >>"$dir/haproxy.log" 2>&1 </dev/null &
        echo $! >"$dir/haproxy.pid"
    fi
    wait_healthy $((port + 2)) 30
    echo "HAProxy: DICOM 127.0.0.1:$port  MLLP :$((port + 1))  HTTP http://127.0.0.1:$((port + 2))/"
    ;;
stop)
    stop_pid "$dir/haproxy.pid" TERM
    stoppers=()
    for n in 1 2 3; do stop_pid "$dir/node$n.pid" TERM & stoppers+=($!); done
    wait "${stoppers[@]}"
    stop_pid "$dir/moto.pid" TERM
    echo "stopped"
    ;;
status)
    for n in $(seq "$nodes"); do
        if healthy "$(node_port "$n" 2)"; then echo "node $n: ok"; else echo "node $n: down"; fi
    done
    if healthy $((port + 2)); then echo "haproxy: ok"; else echo "haproxy: down"; fi
    if [[ -n "$s3" ]]; then
        if curl -fs -o /dev/null --max-time 2 "$(s3_url)"; then echo "s3: ok"; else echo "s3: down"; fi
    fi
    ;;
kill)
    stop_pid "$dir/node$node.pid" KILL
    echo "node $node killed"
    ;;
restart)
    start_node "$node"
    ;;
esac
