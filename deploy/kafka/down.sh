#!/usr/bin/env bash
# deploy/kafka/down.sh: stop what deploy/kafka/up.sh started in a workdir. Run with --help.
set -euo pipefail
# shellcheck source=deploy/kafka/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
usage: deploy/kafka/down.sh --workdir DIR [--timeout SECONDS] [--purge]

Stops the stack deploy/kafka/up.sh started in DIR: deletes every connector (best effort:
stop, reset its offsets, delete), then stops Kafka Connect and then the broker (SIGTERM,
SIGKILL after the timeout), and says what it stopped. Safe to run again, and on a DIR where
nothing runs. Logs and data stay in DIR unless --purge.

Debezium's replication slots stay in the source database (unless a connector was registered
with --drop-slot-on-stop); down.sh names them. Drop one there with
  select pg_drop_replication_slot('NAME');
so the server does not keep WAL for it.

  --workdir DIR       the directory given to up.sh
  --timeout SECONDS   how long each process gets to stop after SIGTERM; default 20
  --purge             also remove the broker's and Connect's data, logs and state files
  --help              this text
EOF
}

WORKDIR="" TIMEOUT=20 PURGE=false
split_equals "$@"
set -- "${ARGS[@]}"
while (($#)); do
    opt=$1
    case $opt in
        --help | -h)
            usage
            exit 0
            ;;
        --purge)
            PURGE=true
            shift
            ;;
        --workdir | --timeout)
            (($# >= 2)) || die "$opt needs a value (see --help)"
            [[ $opt == --workdir ]] && WORKDIR=$2 || TIMEOUT=$2
            shift 2
            ;;
        *) die "unknown option $opt (see --help)" ;;
    esac
done
[[ -n $WORKDIR ]] || die "--workdir DIR is required (see --help)"
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout takes a number of seconds"
if [[ ! -d $WORKDIR ]]; then
    say "nothing to stop: $WORKDIR does not exist"
    exit 0
fi
WORKDIR=$(cd "$WORKDIR" && pwd)

stop_process() { # stop_process NAME WHAT
    local name=$1 what=$2 pid deadline
    if ! pid_alive "$WORKDIR" "$name"; then
        rm -f "$WORKDIR/$name.pid"
        return 1
    fi
    pid=$(read_pid "$WORKDIR" "$name")
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + TIMEOUT))
    while pid_alive "$WORKDIR" "$name" && ((SECONDS < deadline)); do
        sleep 0.1
    done
    if pid_alive "$WORKDIR" "$name"; then
        kill -KILL "$pid" 2>/dev/null || true
        while pid_alive "$WORKDIR" "$name"; do sleep 0.05; done
        say "stopped $what (pid $pid) with SIGKILL: it ignored SIGTERM for ${TIMEOUT}s"
    else
        say "stopped $what (pid $pid)"
    fi
    rm -f "$WORKDIR/$name.pid"
}

stopped=0
if pid_alive "$WORKDIR" connect && [[ -s $WORKDIR/connect-url ]] && command -v curl >/dev/null; then
    url=$(<"$WORKDIR/connect-url")
    if names=$(connector_names "$url"); then
        while read -r name; do
            [[ -n $name ]] || continue
            remove_connector "$url" "$name" "$TIMEOUT" || true
        done <<<"$names"
    else
        say "Kafka Connect at $url did not list its connectors ($REST_CODE): stopping it anyway"
    fi
fi
stop_process connect "Kafka Connect" && stopped=$((stopped + 1))
stop_process broker "the Kafka broker" && stopped=$((stopped + 1))
((stopped)) || say "nothing was running in $WORKDIR"
rm -f "$WORKDIR/bootstrap" "$WORKDIR/connect-url"
if $PURGE; then
    rm -rf "$WORKDIR/broker" "$WORKDIR/connect"
    rm -f "$WORKDIR/ports" "$WORKDIR/.lock"
    say "removed the data and logs in $WORKDIR"
fi
