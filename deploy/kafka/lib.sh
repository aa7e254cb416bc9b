# Shared by up.sh, down.sh and connector.sh (sourced, not run): messages, pid files,
# the Connect REST calls and the little JSON reading they need (no jq, no Python).
# shellcheck shell=bash

KAFKA_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

say() { echo "$*" >&2; }
die() {
    echo "error: $*" >&2
    exit 1
}

need_tool() { # need_tool NAME WHAT-TO-DO
    command -v "$1" >/dev/null || die "$1 not found: $2"
}

# --- the workdir's files ----------------------------------------------------------------
# DIR/broker.pid DIR/connect.pid  pids of the two java processes
# DIR/bootstrap                   host:port of the broker (what clients connect to)
# DIR/connect-url                 http://host:port of Kafka Connect's REST API
# DIR/ports                       broker, controller and Connect REST ports (name=port lines)
# DIR/broker/ DIR/connect/        their configs, data and logs (broker.log, connect.log)

# pid_alive DIR NAME: true when DIR/NAME.pid names a live process started for DIR (the
# command line holds DIR, so a recycled pid is never taken for ours).
pid_alive() {
    local pid
    pid=$(read_pid "$1" "$2") || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$1/" || return 1
}

read_pid() {
    local file=$1/$2.pid pid
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    echo "$pid"
}

port_open() { # port_open PORT: something accepts connections on 127.0.0.1:PORT
    (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

log_tail() { # log_tail FILE [LINES]: the end of a log, indented, on stderr
    local file=$1 lines=${2:-30}
    [[ -s $file ]] || return 0
    say "--- last $lines lines of $file:"
    tail -n "$lines" "$file" | sed 's/^/    /' >&2
}

# --- Connect REST -----------------------------------------------------------------------
# rest METHOD URL [BODY]: sets REST_CODE (000 when nothing answered) and REST_BODY.
rest() {
    local method=$1 url=$2 body=${3-} out
    out=$(mktemp)
    local args=(-sS -o "$out" -w '%{http_code}' --max-time 30 -X "$method" -H 'Accept: application/json')
    if [[ -n $body ]]; then
        args+=(-H 'Content-Type: application/json' --data-binary "$body")
    fi
    REST_CODE=$(curl "${args[@]}" "$url" 2>/dev/null) || REST_CODE=000
    REST_BODY=$(<"$out")
    rm -f "$out"
}

# json_string KEY JSON: the first "KEY":"value" string in JSON, unescaped (empty if none).
json_string() {
    local raw
    raw=$(grep -o "\"$1\":\"\\([^\"\\\\]\\|\\\\.\\)*\"" <<<"$2" | head -n 1) || true
    raw=${raw#\""$1"\":\"}
    raw=${raw%\"}
    raw=${raw//\\\"/\"}
    printf '%b' "${raw//\\\//\/}"
}

# json_states JSON: every "state":"X" in a connector status, the connector's first, then
# one per task.
json_states() {
    grep -o '"state":"[A-Z_]*"' <<<"$1" | sed 's/"state":"\(.*\)"/\1/' || true
}

# json_escape VALUE: VALUE as a JSON string literal.
json_escape() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/\\r}
    s=${s//$'\t'/\\t}
    printf '"%s"' "$s"
}

# connector_names URL: the registered connectors' names, one a line.
connector_names() {
    rest GET "$1/connectors"
    [[ $REST_CODE == 200 ]] || return 1
    grep -o '"\([^"\\]\|\\.\)*"' <<<"$REST_BODY" | sed 's/^"\(.*\)"$/\1/' || true
}

# remove_connector URL NAME TIMEOUT_S: stop the connector, wipe its source offsets (so the
# name can be registered again from scratch), delete it. Prints what it did on stderr;
# returns 1 when Connect did not confirm the deletion.
remove_connector() {
    local url=$1 name=$2 timeout=$3 deadline state
    rest GET "$url/connectors/$name/config"
    if [[ $REST_CODE == 404 ]]; then
        say "connector $name: not registered"
        return 0
    fi
    [[ $REST_CODE == 200 ]] || {
        say "connector $name: Connect at $url did not answer ($REST_CODE)"
        return 1
    }
    local slot drops
    slot=$(json_string slot.name "$REST_BODY")
    drops=$(json_string slot.drop.on.stop "$REST_BODY")
    rest PUT "$url/connectors/$name/stop"
    deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        rest GET "$url/connectors/$name/status"
        state=$(json_states "$REST_BODY" | head -n 1)
        [[ $state == STOPPED || $REST_CODE == 404 ]] && break
        sleep 0.2
    done
    rest DELETE "$url/connectors/$name/offsets"
    [[ $REST_CODE == 200 ]] || say "connector $name: offsets not reset ($REST_CODE): $REST_BODY"
    rest DELETE "$url/connectors/$name"
    if [[ $REST_CODE != 204 && $REST_CODE != 404 ]]; then
        say "connector $name: delete failed ($REST_CODE): $REST_BODY"
        return 1
    fi
    if [[ $drops == true ]]; then
        say "connector $name: deleted (Debezium drops its replication slot ${slot:-?} as it stops)"
    else
        say "connector $name: deleted (its replication slot ${slot:-?} stays in the source: drop it there with select pg_drop_replication_slot('${slot:-?}'))"
    fi
}

# split_equals ARG...: the arguments in ARGS, each --option=value split into --option value.
split_equals() {
    ARGS=()
    local arg
    for arg in "$@"; do
        if [[ $arg == --*=* ]]; then
            ARGS+=("${arg%%=*}" "${arg#*=}")
        else
            ARGS+=("$arg")
        fi
    done
}
