#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on this one machine, beside (not joined to) the
# main node, for trying a cluster locally and for the reliability tests.
#
#   deploy/cluster.sh start     # nodes shipcast-1..3, AMQP on 5701-5703
#   deploy/cluster.sh status    # cluster_status and each node's AMQP URL
#   deploy/cluster.sh kill N    # kill -9 node N (1-3): a crash, not a shutdown
#   deploy/cluster.sh revive N  # start node N again; it rejoins by itself
#   deploy/cluster.sh stop      # stop the three nodes and delete their data
#   deploy/cluster.sh alone N   # one more node N (4-9), not joined: a broker of
#                               # its own to stop and start (AMQP on 570N)
#   deploy/cluster.sh ctl N ... # rabbitmqctl ... on node N
#   deploy/cluster.sh diag N ... # rabbitmq-diagnostics ... on node N
#   deploy/cluster.sh remove N  # stop node N and delete its data
#
# Each node has its own name, data and log directories (owned by the
# `rabbitmq` user, which Debian's rabbitmq-server runs as) and its own AMQP,
# distribution, management and Prometheus ports, all different from the main
# node's (5672, 25672, 15672, 15692). Point shipcast at all three:
#   SHIPCAST_AMQP_URL=amqp://guest:guest@127.0.0.1:5701/
# (aio-pika reconnects to the same address; put a TCP load balancer in front,
# or list the nodes in the tests, to fail over between them).
set -euo pipefail

BASE=${SHIPCAST_CLUSTER_DIR:-/var/tmp/shipcast-cluster}
HOST=$(hostname -s)
NODES=(1 2 3)

node() { echo "shipcast-$1@$HOST"; }
amqp_port() { echo $((5700 + $1)); }

env_of() {  # the environment rabbitmq-server and rabbitmqctl need for node $1
  local n=$1 dir="$BASE/$1"
  echo RABBITMQ_NODENAME="$(node "$n")" RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
    RABBITMQ_DIST_PORT=$((25700 + n)) RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
}

ctl() { local n=$1; shift; rabbitmqctl -n "$(node "$n")" "$@"; }

booted() {  # wait until node $1 answers (await_startup gives up at once on a node not yet listening)
  for _ in $(seq 120); do
    if rabbitmq-diagnostics -q -n "$(node "$1")" ping >/dev/null 2>&1; then
      ctl "$1" await_startup --timeout 120 >/dev/null
      return 0
    fi
    sleep 1
  done
  echo "node $(node "$1") did not start; see $BASE/$1/log" >&2
  return 1
}

launch_node() {  # start node $1 in the background; `booted` waits for it
  local n=$1 dir="$BASE/$1"
  mkdir -p "$dir/mnesia" "$dir/log"
  cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = $(amqp_port "$n")
management.tcp.port = $((15700 + n))
prometheus.tcp.port = $((15800 + n))
loopback_users = none
CONF
  echo "[rabbitmq_management,rabbitmq_prometheus]." >"$dir/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$dir"
  # shellcheck disable=SC2046
  env $(env_of "$n") rabbitmq-server -detached
}

remove_node() {  # stop node $1 (waiting for its VM to exit) and delete its data
  if [[ -f $BASE/$1/rabbitmq.pid ]]; then
    ctl "$1" stop "$BASE/$1/rabbitmq.pid" >/dev/null 2>&1 || kill -9 "$(cat "$BASE/$1/rabbitmq.pid")" 2>/dev/null || true
  fi
  rm -rf "${BASE:?}/$1"
}

number() {  # refuse $1 unless it is a node number (1-9): it names a directory deleted as root
  [[ ${1:-} =~ ^[1-9]$ ]] || { echo "cluster.sh: a node is a number from 1 to 9, not '${1:-}'" >&2; exit 2; }
}

case "${1:-}" in
  start)
    mkdir -p "$BASE"
    for n in "${NODES[@]}"; do launch_node "$n"; done  # the three boot side by side
    for n in "${NODES[@]}"; do booted "$n"; done
    for n in 2 3; do
      ctl "$n" stop_app >/dev/null
      ctl "$n" join_cluster "$(node 1)" >/dev/null
      ctl "$n" start_app >/dev/null
    done
    "$0" status
    ;;
  status)
    ctl 1 cluster_status --formatter json | python3 -c \
      'import json,sys; s=json.load(sys.stdin); print("running:", " ".join(sorted(s["running_nodes"])))'
    for n in "${NODES[@]}"; do echo "$(node "$n")  amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/"; done
    ;;
  alone)
    number "${2:-}"
    n=$2
    mkdir -p "$BASE"
    launch_node "$n"
    booted "$n"
    echo "$(node "$n")  amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/"
    ;;
  ctl)
    number "${2:-}"
    n=$2
    shift 2
    ctl "$n" "$@"
    ;;
  diag)
    number "${2:-}"
    n=$2
    shift 2
    rabbitmq-diagnostics -n "$(node "$n")" "$@"
    ;;
  remove)
    number "${2:-}"
    remove_node "$2"
    ;;
  kill)
    n=${2:?which node, 1-3}
    kill -9 "$(cat "$BASE/$n/rabbitmq.pid")"
    ;;
  revive)
    n=${2:?which node, 1-3}
    # shellcheck disable=SC2046
    env $(env_of "$n") rabbitmq-server -detached
    booted "$n"
    ;;
  stop)
    for n in "${NODES[@]}"; do remove_node "$n"; done  # a node started alone is left running
    ;;
  *)
    sed -n '2,22p' "$0"; exit 2
    ;;
esac
