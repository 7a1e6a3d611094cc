#!/usr/bin/env bash
# A private Docker engine for the docker sandbox backend, and its image.
#
#   bash .ci/docker.sh [start]   install docker.io if missing, start dockerd under /tmp/sca-docker
#                                (unless one already answers there), build sca-sandbox:latest offline
#   bash .ci/docker.sh stop      stop that engine
#
# Then: export DOCKER_HOST=unix:///tmp/sca-docker/docker.sock
# Idempotent; needs root. No registry is used: the image's base is this machine's own Python
# (python -m sandbox.image build; see sandbox/README.md).
set -euo pipefail

ROOT=/tmp/sca-docker
SOCK="$ROOT/docker.sock"
PIDFILE="$ROOT/dockerd.pid"
LOG="$ROOT/dockerd.log"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
export DOCKER_HOST="unix://$SOCK"

say() { echo "docker.sh: $*" >&2; }

answers() {
    [[ -S $SOCK ]] || return 1
    python3 - "$SOCK" <<'EOF' >/dev/null 2>&1
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
sys.exit(0 if data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n")[0] and data.endswith(b"OK") else 1)
EOF
}

stop() {
    if [[ -f $PIDFILE ]]; then
        pid=$(cat "$PIDFILE")
        if kill -0 "$pid" 2>/dev/null; then
            say "stopping dockerd ($pid)"
            kill -TERM "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        fi
        rm -f "$PIDFILE"
    fi
    rm -f "$SOCK"
}

start() {
    if ! command -v dockerd >/dev/null 2>&1; then
        say "installing docker.io"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends docker.io >/dev/null
    fi
    if answers; then
        say "engine already answers at $SOCK"
    else
        stop  # a stale pid file or socket from an engine that died
        mkdir -p "$ROOT"
        say "starting dockerd (log: $LOG)"
        # Containers run without network (the sandbox disables it): no bridge, no iptables rules.
        setsid nohup dockerd \
            --data-root "$ROOT/data" --exec-root "$ROOT/exec" --pidfile "$PIDFILE" \
            -H "unix://$SOCK" --iptables=false --ip-masq=false --bridge=none \
            >"$LOG" 2>&1 </dev/null &
        for _ in $(seq 120); do
            answers && break
            if ! kill -0 $! 2>/dev/null; then
                say "dockerd exited; last lines of $LOG:"; tail -n 15 "$LOG" >&2; exit 1
            fi
            sleep 0.5
        done
        answers || { say "dockerd did not answer in 60 s; last lines of $LOG:"; tail -n 15 "$LOG" >&2; exit 1; }
    fi
    say "building the sandbox image"
    PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m sandbox.image build >&2
    say "ready: export DOCKER_HOST=$DOCKER_HOST"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
