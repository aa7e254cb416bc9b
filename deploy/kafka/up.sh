#!/usr/bin/env bash
# deploy/kafka/up.sh: a single-node Kafka (KRaft) + Kafka Connect + Debezium PostgreSQL
# connector on 127.0.0.1, from jars fetched once from Maven Central. Run with --help.
set -euo pipefail
# shellcheck source=deploy/kafka/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
usage: deploy/kafka/up.sh --workdir DIR [--pg-dsn DSN --tables LIST --topic-prefix PREFIX] [options]
       deploy/kafka/up.sh --fetch-only

Starts a Kafka broker (single node, KRaft: broker and controller in one process) and Kafka
Connect (distributed mode, one worker) on free ports of 127.0.0.1, unless DIR already holds
a running stack, which is then reused; then registers a Debezium PostgreSQL connector named
PREFIX (pgoutput, a filtered publication of exactly LIST) and waits until the connector and
its task are RUNNING. Progress goes to stderr; the LAST line of stdout is the broker's
bootstrap address (host:port). Stop everything with deploy/kafka/down.sh --workdir DIR;
remove one connector with deploy/kafka/connector.sh remove --workdir DIR --name PREFIX.

Without --pg-dsn/--tables/--topic-prefix (they go together) only the stack is started.

  --workdir DIR          where the stack keeps its state: DIR/bootstrap (host:port),
                         DIR/connect-url (Connect's REST API), DIR/ports, DIR/broker.pid,
                         DIR/connect.pid, DIR/broker/broker.log, DIR/connect/connect.log.
                         A DIR without a running stack is started afresh (old data wiped).
  --pg-dsn DSN           the source database: libpq key=value ('host=127.0.0.1 port=5432
                         dbname=shop user=sidecar') or a URI (postgresql://user@host:5432/shop).
                         Missing parts come from PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD
                         (keep the password in PGPASSWORD, not in the DSN: argv is public).
                         Debezium connects over TCP, so the host cannot be a socket directory.
                         The server needs wal_level=logical, the user REPLICATION and the right
                         to create a publication on the tables (or their ownership).
  --tables LIST          comma-separated schema.table names: table.include.list
  --topic-prefix PREFIX  topic.prefix and the connector's name ([A-Za-z0-9._-]); topics are
                         PREFIX.schema.table
  --schemas true|false   JSON messages with an embedded schema (key and value converters'
                         schemas.enable); default true
  --snapshot-mode MODE   Debezium snapshot.mode (initial, no_data, always, initial_only,
                         when_needed, ...); default initial
  --partitions N         partitions of the topics Connect creates for the connector (and the
                         broker's num.partitions when this call starts the stack); default 1
  --heartbeat-ms N       heartbeat.interval.ms; default 10000 (0 disables heartbeats)
  --decimal-mode MODE    decimal.handling.mode: precise (default), double or string
  --slot-name NAME       replication slot; default dbz_ + PREFIX made a valid identifier
  --publication-name N   publication; default the same as the slot name
  --drop-slot-on-stop    slot.drop.on.stop=true: the slot goes when the connector stops
                         (for tests; otherwise it stays so Debezium can resume)
  --replica-identity-full
                         give the tables of LIST that have no replica identity REPLICA
                         IDENTITY FULL (as their owner) instead of refusing them: before
                         registering, up.sh checks with psql that every table LIST matches
                         (every partition of a partitioned one) has a primary key or another
                         replica identity, because once the connector publishes a table
                         without one, the application's UPDATE and DELETE on it fail. FULL
                         makes every UPDATE and DELETE write the whole old row to the WAL;
                         a primary key is the cheaper fix
  --set KEY=VALUE        any other connector property (repeatable; wins over the above)
  --broker-port N        the broker's port; default a free one
  --connect-port N       Kafka Connect's REST port; default a free one
  --timeout SECONDS      how long to wait for each step (broker, Connect, connector); default 120
  --fetch-only           only make sure the jars are in the cache; prints its lib directory
  --dry-run              only print the connector's configuration JSON (password included;
                         connects to nothing, so checks no replica identity)
  --help                 this text

Environment:
  PGML_SIDECAR_CACHE      cache root (default ~/.cache/pgml-sidecar); jars go to
                          CACHE/kafka/kafka-<version>-debezium-<version>-<pom hash>/lib and
                          are fetched with mvn only when that directory is not complete.
  PGML_SIDECAR_KAFKA_HEAP JVM memory options of each process (default -Xms64m -Xmx512m)

Needs java 17+, curl, psql to register a connector, and mvn the first time (Debian:
apt-get install default-jdk-headless postgresql-client maven curl). The versions are in
deploy/kafka/pom.xml.
EOF
}

WORKDIR="" PG_DSN="" TABLES="" PREFIX="" SCHEMAS=true SNAPSHOT_MODE=initial PARTITIONS=1
HEARTBEAT_MS=10000 DECIMAL_MODE=precise SLOT_NAME="" PUBLICATION_NAME="" DROP_SLOT=false
BROKER_PORT="" CONNECT_PORT="" TIMEOUT=120 FETCH_ONLY=false DRY_RUN=false IDENTITY_FULL=false
EXTRA=()

split_equals "$@"
set -- "${ARGS[@]}"
while (($#)); do
    opt=$1
    case $opt in
        --help | -h)
            usage
            exit 0
            ;;
        --fetch-only | --drop-slot-on-stop | --dry-run | --replica-identity-full)
            case $opt in
                --fetch-only) FETCH_ONLY=true ;;
                --drop-slot-on-stop) DROP_SLOT=true ;;
                --dry-run) DRY_RUN=true ;;
                --replica-identity-full) IDENTITY_FULL=true ;;
            esac
            shift
            continue
            ;;
        --workdir | --pg-dsn | --tables | --topic-prefix | --schemas | --snapshot-mode | \
            --partitions | --heartbeat-ms | --decimal-mode | --slot-name | --publication-name | \
            --set | --broker-port | --connect-port | --timeout) ;;
        *) die "unknown option $opt (see --help)" ;;
    esac
    (($# >= 2)) || die "$opt needs a value (see --help)"
    case $opt in
        --workdir) WORKDIR=$2 ;;
        --pg-dsn) PG_DSN=$2 ;;
        --tables) TABLES=$2 ;;
        --topic-prefix) PREFIX=$2 ;;
        --schemas) SCHEMAS=$2 ;;
        --snapshot-mode) SNAPSHOT_MODE=$2 ;;
        --partitions) PARTITIONS=$2 ;;
        --heartbeat-ms) HEARTBEAT_MS=$2 ;;
        --decimal-mode) DECIMAL_MODE=$2 ;;
        --slot-name) SLOT_NAME=$2 ;;
        --publication-name) PUBLICATION_NAME=$2 ;;
        --set) EXTRA+=("$2") ;;
        --broker-port) BROKER_PORT=$2 ;;
        --connect-port) CONNECT_PORT=$2 ;;
        --timeout) TIMEOUT=$2 ;;
        *) die "unknown option $opt (see --help)" ;;
    esac
    shift 2
done

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
[[ $SCHEMAS == true || $SCHEMAS == false ]] || die "--schemas takes true or false, not '$SCHEMAS'"
is_uint "$PARTITIONS" && ((PARTITIONS >= 1)) || die "--partitions takes a number >= 1"
is_uint "$HEARTBEAT_MS" || die "--heartbeat-ms takes a number of milliseconds"
is_uint "$TIMEOUT" && ((TIMEOUT >= 1)) || die "--timeout takes a number of seconds >= 1"
case $DECIMAL_MODE in precise | double | string) ;; *) die "--decimal-mode takes precise, double or string" ;; esac
for port in "$BROKER_PORT" "$CONNECT_PORT"; do
    [[ -z $port ]] || { is_uint "$port" && ((port > 0 && port < 65536)); } \
        || die "a port takes a number from 1 to 65535, not '$port'"
done
for kv in "${EXTRA[@]}"; do
    [[ $kv == ?*=* ]] || die "--set takes KEY=VALUE, not '$kv'"
done

# --- the jars -----------------------------------------------------------------------------
pom_value() { sed -n "s:.*<$1>\(.*\)</$1>.*:\1:p" "$KAFKA_DIR/pom.xml" | head -n 1; }
KAFKA_VERSION=$(pom_value kafka.version)
DEBEZIUM_VERSION=$(pom_value debezium.version)
POM_HASH=$(cat "$KAFKA_DIR/pom.xml" "$KAFKA_DIR/settings.xml" | sha256sum | cut -c1-10)
CACHE_ROOT=${PGML_SIDECAR_CACHE:-${HOME:-/root}/.cache/pgml-sidecar}
CACHE=$CACHE_ROOT/kafka/kafka-$KAFKA_VERSION-debezium-$DEBEZIUM_VERSION-$POM_HASH
LIB=$CACHE/lib

check_java() {
    need_tool java "install a JDK 17 or newer (Debian: apt-get install default-jdk-headless)"
    local version major
    version=$(java -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n 1)
    major=${version%%.*}
    is_uint "$major" && ((major >= 17)) \
        || die "java is version '$version'; Kafka $KAFKA_VERSION needs 17 or newer: install default-jdk-headless or put a newer java first on PATH"
}

fetch_jars() {
    [[ -f $CACHE/complete ]] && return 0
    need_tool mvn "install Maven to fetch the Kafka and Debezium jars once (Debian: apt-get install maven)"
    mkdir -p "$CACHE"
    exec 8>"$CACHE/.lock"
    flock 8
    if [[ ! -f $CACHE/complete ]]; then
        local tmp=$CACHE/lib.partial started=$EPOCHREALTIME
        rm -rf "$tmp"
        say "==> fetching Kafka $KAFKA_VERSION, Kafka Connect and Debezium $DEBEZIUM_VERSION with mvn into $CACHE (once)"
        if ! (cd "$CACHE" && mvn -B -q -s "$KAFKA_DIR/settings.xml" -f "$KAFKA_DIR/pom.xml" \
            dependency:copy-dependencies -DoutputDirectory="$tmp") >"$CACHE/mvn.log" 2>&1; then
            log_tail "$CACHE/mvn.log" 25
            die "mvn could not fetch the jars (full log: $CACHE/mvn.log): check that Maven Central is reachable and the versions in $KAFKA_DIR/pom.xml exist there"
        fi
        local jar
        for jar in "kafka_2.13-$KAFKA_VERSION" "connect-runtime-$KAFKA_VERSION" \
            "connect-json-$KAFKA_VERSION" "debezium-connector-postgres-$DEBEZIUM_VERSION"; do
            [[ -f $tmp/$jar.jar ]] || die "mvn finished but $jar.jar is not in $tmp: see $CACHE/mvn.log"
        done
        rm -rf "$LIB"
        mv "$tmp" "$LIB"
        touch "$CACHE/complete"
        say "    fetched $(find "$LIB" -name '*.jar' | wc -l) jars in $(elapsed "$started") s"
    fi
    exec 8>&-
}

elapsed() { # elapsed START: seconds since an $EPOCHREALTIME, one decimal
    local now=${EPOCHREALTIME/[,.]/} start=${1/[,.]/}
    local ms=$(((now - start) / 1000))
    printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}


# --- the connector's configuration (checked before anything starts) ---------------------
if [[ -n $PG_DSN || -n $TABLES || -n $PREFIX ]]; then
    [[ -n $PG_DSN && -n $TABLES && -n $PREFIX ]] \
        || die "--pg-dsn, --tables and --topic-prefix go together: give all three, or none to only start the stack"
fi
declare -A DSN=() CONFIG=()
ORDER=()

setting() { # setting KEY VALUE: a connector property (a later one wins)
    [[ -v CONFIG[$1] ]] || ORDER+=("$1")
    CONFIG[$1]=$2
}

percent_decode() {
    local s=${1//\\/\\\\}
    printf '%b' "${s//%/\\x}"
}

parse_dsn_uri() {
    local rest=${1#*://} query="" userinfo hostport
    if [[ $rest == *\?* ]]; then
        query=${rest#*\?}
        rest=${rest%%\?*}
    fi
    if [[ $rest == */* ]]; then
        DSN[dbname]=$(percent_decode "${rest#*/}")
        rest=${rest%%/*}
    fi
    if [[ $rest == *@* ]]; then
        userinfo=${rest%@*}
        rest=${rest##*@}
        DSN[user]=$(percent_decode "${userinfo%%:*}")
        [[ $userinfo == *:* ]] && DSN[password]=$(percent_decode "${userinfo#*:}")
    fi
    hostport=${rest%%,*}
    if [[ $hostport == \[* ]]; then
        DSN[host]=${hostport%%]*}
        DSN[host]=${DSN[host]#[}
        hostport=${hostport#*]}
        [[ $hostport == :* ]] && DSN[port]=${hostport#:}
    elif [[ -n $hostport ]]; then
        DSN[host]=$(percent_decode "${hostport%%:*}")
        [[ $hostport == *:* ]] && DSN[port]=${hostport#*:}
    fi
    local pair
    if [[ -n $query ]]; then
        local IFS='&'
        for pair in $query; do
            [[ $pair == *=* ]] || die "the DSN's query part has '$pair', not key=value"
            DSN[${pair%%=*}]=$(percent_decode "${pair#*=}")
        done
    fi
    return 0
}

parse_dsn_kv() {
    local s=$1 n=${#1} i=0 key val c
    while :; do
        while ((i < n)) && [[ ${s:i:1} == [[:space:]] ]]; do ((i += 1)); done
        ((i < n)) || break
        key=""
        while ((i < n)) && [[ ${s:i:1} != [=[:space:]] ]]; do
            key+=${s:i:1}
            ((i += 1))
        done
        while ((i < n)) && [[ ${s:i:1} == [[:space:]] ]]; do ((i += 1)); done
        [[ ${s:i:1} == = ]] || die "the DSN is not key=value pairs (near '$key'): see --help"
        ((i += 1))
        while ((i < n)) && [[ ${s:i:1} == [[:space:]] ]]; do ((i += 1)); done
        val=""
        if [[ ${s:i:1} == "'" ]]; then
            ((i += 1))
            while :; do
                ((i < n)) || die "the DSN has an unterminated quoted value for '$key'"
                c=${s:i:1}
                if [[ $c == '\' ]]; then
                    val+=${s:i+1:1}
                    ((i += 2))
                elif [[ $c == "'" ]]; then
                    ((i += 1))
                    break
                else
                    val+=$c
                    ((i += 1))
                fi
            done
        else
            while ((i < n)) && [[ ${s:i:1} != [[:space:]] ]]; do
                c=${s:i:1}
                if [[ $c == '\' ]]; then
                    val+=${s:i+1:1}
                    ((i += 2))
                else
                    val+=$c
                    ((i += 1))
                fi
            done
        fi
        DSN[$key]=$val
    done
}

# connector_config: the connector's properties from the options, as JSON in BODY (dies on
# anything wrong, before a process starts)
connector_config() {
    if [[ $PG_DSN =~ ^postgres(ql)?:// ]]; then
        parse_dsn_uri "$PG_DSN"
    else
        parse_dsn_kv "$PG_DSN"
    fi
    DB_HOST=${DSN[hostaddr]:-${DSN[host]:-${PGHOST:-localhost}}}
    DB_HOST=${DB_HOST%%,*}
    DB_PORT=${DSN[port]:-${PGPORT:-5432}}
    DB_PORT=${DB_PORT%%,*}
    DB_USER=${DSN[user]:-${PGUSER:-$(id -un)}}
    DB_NAME=${DSN[dbname]:-${PGDATABASE:-$DB_USER}}
    DB_PASSWORD=${DSN[password]:-${PGPASSWORD:-}}
    DB_SSLMODE=${DSN[sslmode]:-${PGSSLMODE:-}}
    [[ $DB_HOST != /* ]] \
        || die "the DSN's host is a socket directory ($DB_HOST): Debezium connects over TCP, give host=127.0.0.1 or a host name"
    is_uint "$DB_PORT" || die "the DSN's port is not a number: '$DB_PORT'"

    [[ $PREFIX =~ ^[A-Za-z0-9._-]+$ && ${#PREFIX} -le 200 ]] \
        || die "--topic-prefix takes letters, digits, '.', '_' and '-' (at most 200), not '$PREFIX'"
    local table identifier kv key TABLE_LIST
    IFS=',' read -r -a TABLE_LIST <<<"$TABLES"
    INCLUDE=""
    for table in "${TABLE_LIST[@]}"; do
        table=${table//[[:space:]]/}
        [[ -z $table ]] && continue
        [[ $table == ?*.?* ]] || die "--tables takes schema.table names (e.g. public.$table), not '$table'"
        INCLUDE+=${INCLUDE:+,}$table
    done
    [[ -n $INCLUDE ]] || die "--tables names no table"
    identifier=$(tr 'A-Z' 'a-z' <<<"$PREFIX" | sed 's/[^a-z0-9_]/_/g')
    identifier=dbz_$identifier
    identifier=${identifier:0:63}
    SLOT_NAME=${SLOT_NAME:-$identifier}
    PUBLICATION_NAME=${PUBLICATION_NAME:-$identifier}
    [[ $SLOT_NAME =~ ^[a-z0-9_]{1,63}$ ]] \
        || die "--slot-name takes lower-case letters, digits and '_' (at most 63), not '$SLOT_NAME'"

    JSON_CONVERTER=org.apache.kafka.connect.json.JsonConverter
    setting connector.class io.debezium.connector.postgresql.PostgresConnector
    setting tasks.max 1
    setting database.hostname "$DB_HOST"
    setting database.port "$DB_PORT"
    setting database.user "$DB_USER"
    [[ -n $DB_PASSWORD ]] && setting database.password "$DB_PASSWORD"
    setting database.dbname "$DB_NAME"
    [[ -n $DB_SSLMODE ]] && setting database.sslmode "$DB_SSLMODE"
    setting topic.prefix "$PREFIX"
    setting plugin.name pgoutput
    setting slot.name "$SLOT_NAME"
    setting publication.name "$PUBLICATION_NAME"
    setting publication.autocreate.mode filtered
    setting table.include.list "$INCLUDE"
    setting snapshot.mode "$SNAPSHOT_MODE"
    setting heartbeat.interval.ms "$HEARTBEAT_MS"
    setting decimal.handling.mode "$DECIMAL_MODE"
    setting time.precision.mode adaptive_time_microseconds
    setting skipped.operations none
    # Debezium's defaults (poll every 500 ms, batches of 2048) cost latency and throughput
    setting poll.interval.ms 50
    setting max.batch.size 8192
    setting max.queue.size 32768
    setting tombstones.on.delete true
    setting key.converter "$JSON_CONVERTER"
    setting key.converter.schemas.enable "$SCHEMAS"
    setting value.converter "$JSON_CONVERTER"
    setting value.converter.schemas.enable "$SCHEMAS"
    setting topic.creation.default.partitions "$PARTITIONS"
    setting topic.creation.default.replication.factor 1
    $DROP_SLOT && setting slot.drop.on.stop true
    for kv in "${EXTRA[@]}"; do
        setting "${kv%%=*}" "${kv#*=}"
    done
    BODY="{"
    for key in "${ORDER[@]}"; do
        BODY+="$(json_escape "$key"):$(json_escape "${CONFIG[$key]}"),"
    done
    BODY="${BODY%,}}"
}

[[ -z $PREFIX ]] || connector_config
if $DRY_RUN; then
    [[ -n $PREFIX ]] || die "--dry-run shows a connector's configuration: give --pg-dsn, --tables and --topic-prefix"
    echo "$BODY"
    exit 0
fi

# --- the tables' replica identity (checked before anything starts) ------------------------
source_psql() { # source_psql ARGS...: psql into the connector's database, as Debezium logs in
    local env=(PGHOST="$DB_HOST" PGPORT="$DB_PORT" PGUSER="$DB_USER" PGDATABASE="$DB_NAME"
        PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-10}")
    [[ -n $DB_PASSWORD ]] && env+=(PGPASSWORD="$DB_PASSWORD")
    [[ -n $DB_SSLMODE ]] && env+=(PGSSLMODE="$DB_SSLMODE")
    env "${env[@]}" psql -X -q -v ON_ERROR_STOP=1 "$@"
}

psql_error() { # psql_error FILE: psql's first error line, without its prefixes
    grep -m 1 -v '^[[:space:]]*$' "$1" | sed 's/^psql:[^ ]* //; s/^error: //; s/^ERROR: *//'
}

# check_replica_identity: refuse (or with --replica-identity-full fix) the tables that the
# connector's publication would make refuse the application's UPDATE and DELETE; the wording
# is that of pgml-sidecar's own check (replicator/source.py: replica_identity_advice).
check_replica_identity() {
    need_tool psql "install the PostgreSQL client (Debian: apt-get install postgresql-client): up.sh checks with it that the tables have a replica identity before Debezium publishes them"
    local err out
    err=$(mktemp)
    if ! out=$(source_psql -A -t -F $'\x1f' -v include="$INCLUDE" \
        -f "$KAFKA_DIR/replica_identity.sql" 2>"$err"); then
        local why
        why=$(psql_error "$err")
        rm -f "$err"
        die "cannot check the tables' replica identity in database $DB_NAME at $DB_HOST:$DB_PORT as $DB_USER: ${why:-psql failed}"
    fi
    [[ -n $out ]] || {
        rm -f "$err"
        return 0
    }
    local rows row name quoted reason parent names=() reasons=() described=() alters=()
    local statements=""
    mapfile -t rows <<<"$out"
    for row in "${rows[@]}"; do
        IFS=$'\x1f' read -r name quoted reason parent <<<"$row"
        [[ -n $parent ]] && reason="a partition of $parent; $reason"
        names+=("$name")
        reasons+=("$reason")
        described+=("$name ($reason)")
        alters+=("ALTER TABLE $quoted REPLICA IDENTITY FULL")
        statements+="alter table $quoted replica identity full;"
    done
    local what harm each=" to each" alter_list
    alter_list=$(printf '%s; ' "${alters[@]}")
    alter_list=${alter_list%; }
    if ((${#names[@]} == 1)); then
        what="${names[0]} has no replica identity (${reasons[0]})"
        harm="once published, the application's UPDATE and DELETE on it would fail"
        each=""
    else
        what="$(printf '%s, ' "${described[@]}")"
        what="${what%, } have no replica identity"
        harm="once published, the application's UPDATE and DELETE on them would fail"
    fi
    local names_list
    names_list=$(printf '%s, ' "${names[@]}")
    names_list=${names_list%, }
    if ! $IDENTITY_FULL; then
        rm -f "$err"
        die "$what: $harm; add a primary key$each, or run $alter_list (every UPDATE and DELETE then writes the whole old row to the WAL), or pass --replica-identity-full to have up.sh run it"
    fi
    if ! source_psql -1 -c "$statements" >/dev/null 2>"$err"; then
        local why
        why=$(psql_error "$err")
        rm -f "$err"
        die "cannot set REPLICA IDENTITY FULL on $names_list: ${why:-psql failed}; have the tables' owner run $alter_list (or add a primary key$each), then run up.sh again"
    fi
    rm -f "$err"
    say "==> set REPLICA IDENTITY FULL on $names_list (every UPDATE and DELETE now writes the whole old row to the WAL)"
}

[[ -z $PREFIX ]] || check_replica_identity
check_java
fetch_jars
if $FETCH_ONLY; then
    echo "$LIB"
    exit 0
fi

# --- the stack ----------------------------------------------------------------------------
[[ -n $WORKDIR ]] || die "--workdir DIR is required (see --help)"
need_tool curl "install curl (Debian: apt-get install curl): up.sh talks to Kafka Connect's REST API with it"
mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
exec 9>"$WORKDIR/.lock"
flock 9

HEAP=${PGML_SIDECAR_KAFKA_HEAP:--Xms64m -Xmx512m}

pick_port() { # a port nothing listens on, outside the kernel's ephemeral range
    local port tries=0
    while ((tries++ < 200)); do
        port=$((20000 + RANDOM % 12000))
        [[ " ${TAKEN_PORTS-} " == *" $port "* ]] && continue
        port_open "$port" && continue
        TAKEN_PORTS="${TAKEN_PORTS-} $port"
        echo "$port"
        return 0
    done
    die "found no free port on 127.0.0.1 in 200 tries"
}

own_port() { # own_port GIVEN WHAT: GIVEN when set (and free), else a free port
    if [[ -n $1 ]]; then
        ! port_open "$1" || die "port $1 on 127.0.0.1 is in use (asked for with $2): pick another or leave the option out"
        TAKEN_PORTS="${TAKEN_PORTS-} $1"
        echo "$1"
    else
        pick_port
    fi
}

start_java() { # start_java NAME MAIN ARGS...: a detached JVM, its pid in DIR/NAME.pid
    local name=$1
    shift
    rm -f "$WORKDIR/$name.pid"
    # shellcheck disable=SC2086  # HEAP holds several options
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$WORKDIR/$name.pid" \
        java $HEAP -XX:+UseSerialGC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" \
        -Dpgml.kafka.log="$WORKDIR/$name/$name.log" -cp "$LIB/*" "$@" \
        </dev/null >"$WORKDIR/$name/$name.out" 2>&1 8>&- 9>&- &
    local tries=0
    until [[ -s $WORKDIR/$name.pid ]]; do
        ((tries++ < 100)) || die "$name did not start (no pid written)"
        sleep 0.05
    done
}

exited() { # exited NAME WHAT: die because the process NAME stopped, showing why
    local log=$WORKDIR/$1/$1.log
    log_tail "$WORKDIR/$1/$1.out" 10
    log_tail "$log" 30
    if grep -qs 'Address already in use' "$log" "$WORKDIR/$1/$1.out"; then
        die "$2 could not bind its port (in use by another program): run up.sh again to pick other ports, or free it"
    fi
    die "$2 exited while starting: see $log"
}

start_stack() {
    local started=$EPOCHREALTIME step
    rm -rf "$WORKDIR/broker" "$WORKDIR/connect"
    rm -f "$WORKDIR"/{broker.pid,connect.pid,bootstrap,connect-url,ports}
    mkdir -p "$WORKDIR/broker/data" "$WORKDIR/connect"
    local bport cport rport
    bport=$(own_port "$BROKER_PORT" --broker-port)
    TAKEN_PORTS="$bport"
    cport=$(pick_port)
    TAKEN_PORTS="$bport $cport"
    rport=$(own_port "$CONNECT_PORT" --connect-port)

    cat >"$WORKDIR/broker/server.properties" <<EOF
# written by deploy/kafka/up.sh: one node that is broker and KRaft controller
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$bport,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$bport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$WORKDIR/broker/data
num.partitions=$PARTITIONS
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true
EOF
    # A cluster id is 16 random bytes in URL-safe base64 without padding.
    local cluster_id
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    step=$EPOCHREALTIME
    say "==> formatting KRaft storage in $WORKDIR/broker/data"
    # shellcheck disable=SC2086
    java $HEAP -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" \
        -Dpgml.kafka.log="$WORKDIR/broker/format.log" -cp "$LIB/*" \
        kafka.tools.StorageTool format -t "$cluster_id" -c "$WORKDIR/broker/server.properties" \
        >"$WORKDIR/broker/format.out" 2>&1 \
        || {
            log_tail "$WORKDIR/broker/format.out" 20
            die "formatting the broker's storage failed: see $WORKDIR/broker/format.out"
        }

    say "==> starting the broker on 127.0.0.1:$bport (controller :$cport; log $WORKDIR/broker/broker.log)"
    start_java broker kafka.Kafka "$WORKDIR/broker/server.properties"
    local deadline=$((SECONDS + TIMEOUT))
    until port_open "$bport" && grep -qs 'Kafka Server started' "$WORKDIR/broker/broker.log"; do
        pid_alive "$WORKDIR" broker || exited broker "the broker"
        ((SECONDS < deadline)) || {
            log_tail "$WORKDIR/broker/broker.log" 30
            die "the broker did not start within ${TIMEOUT}s: see $WORKDIR/broker/broker.log"
        }
        sleep 0.1
    done
    say "    broker up in $(elapsed "$step") s"

    cat >"$WORKDIR/connect/connect.properties" <<EOF
# written by deploy/kafka/up.sh: Kafka Connect, distributed mode, one worker
bootstrap.servers=127.0.0.1:$bport
group.id=pgml-sidecar-connect
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
config.storage.topic=connect-configs
offset.storage.topic=connect-offsets
status.storage.topic=connect-status
config.storage.replication.factor=1
offset.storage.replication.factor=1
status.storage.replication.factor=1
offset.storage.partitions=1
status.storage.partitions=1
offset.flush.interval.ms=1000
listeners=http://127.0.0.1:$rport
rest.advertised.host.name=127.0.0.1
rest.advertised.port=$rport
scheduled.rebalance.max.delay.ms=0
topic.creation.enable=true
plugin.discovery=service_load
EOF
    step=$EPOCHREALTIME
    say "==> starting Kafka Connect, REST on 127.0.0.1:$rport (log $WORKDIR/connect/connect.log)"
    start_java connect org.apache.kafka.connect.cli.ConnectDistributed \
        "$WORKDIR/connect/connect.properties"
    deadline=$((SECONDS + TIMEOUT))
    while :; do
        pid_alive "$WORKDIR" connect || exited connect "Kafka Connect"
        rest GET "http://127.0.0.1:$rport/health"
        [[ $REST_CODE == 200 ]] && break
        ((SECONDS < deadline)) || {
            log_tail "$WORKDIR/connect/connect.log" 30
            die "Kafka Connect did not become ready within ${TIMEOUT}s (last answer $REST_CODE): see $WORKDIR/connect/connect.log"
        }
        sleep 0.2
    done
    say "    Kafka Connect up in $(elapsed "$step") s"

    printf 'broker=%s\ncontroller=%s\nconnect=%s\n' "$bport" "$cport" "$rport" >"$WORKDIR/ports"
    echo "http://127.0.0.1:$rport" >"$WORKDIR/connect-url"
    echo "127.0.0.1:$bport" >"$WORKDIR/bootstrap"
    say "    stack up in $(elapsed "$started") s"
}

if pid_alive "$WORKDIR" broker && pid_alive "$WORKDIR" connect \
    && [[ -s $WORKDIR/bootstrap && -s $WORKDIR/connect-url ]]; then
    CONNECT_URL=$(<"$WORKDIR/connect-url")
    rest GET "$CONNECT_URL/health"
    [[ $REST_CODE == 200 ]] \
        || die "the stack in $WORKDIR runs but Kafka Connect does not answer at $CONNECT_URL ($REST_CODE): run deploy/kafka/down.sh --workdir $WORKDIR, then up.sh again"
    say "==> reusing the running stack in $WORKDIR ($(<"$WORKDIR/bootstrap"))"
elif pid_alive "$WORKDIR" broker || pid_alive "$WORKDIR" connect; then
    die "the stack in $WORKDIR is half running: run deploy/kafka/down.sh --workdir $WORKDIR first"
else
    start_stack
fi
CONNECT_URL=$(<"$WORKDIR/connect-url")
BOOTSTRAP=$(<"$WORKDIR/bootstrap")

if [[ -z $PREFIX ]]; then
    echo "$BOOTSTRAP"
    exit 0
fi

# --- registering the connector ----------------------------------------------------------
step=$EPOCHREALTIME
say "==> registering Debezium connector $PREFIX: $INCLUDE in $DB_NAME at $DB_HOST:$DB_PORT (slot $SLOT_NAME, publication $PUBLICATION_NAME)"
deadline=$((SECONDS + TIMEOUT))
while :; do
    rest PUT "$CONNECT_URL/connectors/$PREFIX/config" "$BODY"
    case $REST_CODE in
        200 | 201) break ;;
        000 | 409 | 503) ;; # not reachable, rebalancing or still starting: try again
        *)
            message=$(json_string message "$REST_BODY")
            die "Kafka Connect refused connector $PREFIX ($REST_CODE): ${message:-$REST_BODY}"
            ;;
    esac
    ((SECONDS < deadline)) \
        || die "Kafka Connect at $CONNECT_URL did not take connector $PREFIX within ${TIMEOUT}s (last answer $REST_CODE: $REST_BODY)"
    sleep 0.5
done

connect_log=$WORKDIR/connect/connect.log
while :; do
    rest GET "$CONNECT_URL/connectors/$PREFIX/status"
    mapfile -t states < <(json_states "$REST_BODY")
    if [[ " ${states[*]-} " == *" FAILED "* ]]; then
        grep -o '"trace":"\([^"\\]\|\\.\)*"' <<<"$REST_BODY" | while read -r trace; do
            say "--- trace:"
            json_string trace "$trace" | head -n 30 | sed 's/^/    /' >&2
        done
        log_tail "$connect_log" 12
        die "connector $PREFIX FAILED (states: ${states[*]}): the trace is above; remove it with deploy/kafka/connector.sh remove --workdir $WORKDIR --name $PREFIX"
    fi
    if ((${#states[@]} >= 2)); then
        all_running=true
        for state in "${states[@]}"; do [[ $state == RUNNING ]] || all_running=false; done
        $all_running && break
    fi
    if ((SECONDS >= deadline)); then
        log_tail "$connect_log" 30
        die "connector $PREFIX is not RUNNING after ${TIMEOUT}s (states: ${states[*]:-none}; status answer $REST_CODE): see $connect_log"
    fi
    sleep 0.2
done
say "    connector $PREFIX RUNNING in $(elapsed "$step") s; topics $PREFIX.<schema>.<table> on $BOOTSTRAP"
echo "$BOOTSTRAP"
