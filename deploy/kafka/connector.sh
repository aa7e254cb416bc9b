#!/usr/bin/env bash
# deploy/kafka/connector.sh: look at or remove connectors of a stack started by up.sh.
# (Adding one is up.sh's job: up.sh on a running stack only registers the connector.)
set -euo pipefail
# shellcheck source=deploy/kafka/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
usage: deploy/kafka/connector.sh list   --workdir DIR
       deploy/kafka/connector.sh status --workdir DIR --name NAME
       deploy/kafka/connector.sh remove --workdir DIR --name NAME [--timeout SECONDS]

  list     the names of the registered connectors, one a line (stdout)
  status   the connector's status JSON from Kafka Connect (stdout); exit 1 if it is unknown
  remove   stop the connector, reset its source offsets (so the name can be registered
           again from scratch: a new snapshot), delete it. Its replication slot stays in
           the source unless it was registered with --drop-slot-on-stop. Removing a
           connector that is not there succeeds.

  --workdir DIR       the directory given to up.sh (holds DIR/connect-url)
  --name NAME         the connector's name: up.sh's --topic-prefix
  --timeout SECONDS   how long to wait for the connector to stop; default 30
  --help              this text
EOF
}

ACTION="" WORKDIR="" NAME="" TIMEOUT=30
split_equals "$@"
set -- "${ARGS[@]}"
while (($#)); do
    opt=$1
    case $opt in
        --help | -h)
            usage
            exit 0
            ;;
        --workdir | --name | --timeout)
            (($# >= 2)) || die "$opt needs a value (see --help)"
            case $opt in
                --workdir) WORKDIR=$2 ;;
                --name) NAME=$2 ;;
                --timeout) TIMEOUT=$2 ;;
            esac
            shift 2
            ;;
        list | status | remove)
            [[ -z $ACTION ]] || die "one action at a time: $ACTION or $opt"
            ACTION=$opt
            shift
            ;;
        *) die "unknown option or action '$opt': list, status or remove (see --help)" ;;
    esac
done
[[ -n $ACTION ]] || die "say what to do: list, status or remove (see --help)"
[[ -n $WORKDIR ]] || die "--workdir DIR is required (see --help)"
[[ $ACTION == list || -n $NAME ]] || die "$ACTION needs --name NAME"
[[ -z $NAME || $NAME =~ ^[A-Za-z0-9._-]+$ ]] || die "--name takes letters, digits, '.', '_' and '-'"
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout takes a number of seconds"
need_tool curl "install curl (Debian: apt-get install curl)"
[[ -s $WORKDIR/connect-url ]] && pid_alive "$(cd "$WORKDIR" && pwd)" connect \
    || die "no Kafka Connect runs in $WORKDIR: start it with deploy/kafka/up.sh --workdir $WORKDIR"
URL=$(<"$WORKDIR/connect-url")

case $ACTION in
    list)
        connector_names "$URL" || die "Kafka Connect at $URL did not answer ($REST_CODE)"
        ;;
    status)
        rest GET "$URL/connectors/$NAME/status"
        [[ $REST_CODE == 200 ]] || die "no status for connector $NAME ($REST_CODE): $REST_BODY"
        echo "$REST_BODY"
        ;;
    remove)
        remove_connector "$URL" "$NAME" "$TIMEOUT" || die "connector $NAME was not removed"
        ;;
esac
