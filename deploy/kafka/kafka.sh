#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft: broker + controller in one JVM) on
# loopback, for development and CI. The jars come from Maven Central (see
# pom.xml beside this script); nothing is downloaded by hand, no Docker.
#
#   kafka.sh fetch            copy the broker jars into the cache (once)
#   kafka.sh start            fetch, format storage (once), start, wait until ready
#   kafka.sh stop             SIGTERM the broker and wait for it to exit
#   kafka.sh status           exit 0 when running, 3 when not
#   kafka.sh topics [args]    TopicCommand against the broker (default: --list)
#
# Environment (all optional):
#   CRM_KAFKA_CACHE          jars and Maven repo    (default ~/.cache/crm/kafka)
#   CRM_KAFKA_PORT           client port            (default 19092; controller = port + 1)
#   CRM_KAFKA_DATA           data, pid, log, config (default $CRM_KAFKA_CACHE/data)
#   CRM_KAFKA_START_TIMEOUT  seconds to wait for readiness (default 90)
#   CRM_KAFKA_STOP_TIMEOUT   seconds to wait for a clean stop (default 60)
#   CRM_KAFKA_HEAP           JVM heap flags         (default "-Xms128m -Xmx512m")
#
# Clients connect to 127.0.0.1:$CRM_KAFKA_PORT (export CRM_KAFKA_BOOTSTRAP=...).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${CRM_KAFKA_CACHE:-$HOME/.cache/crm/kafka}"
m2="$cache/m2"
lib="$cache/lib"
port="${CRM_KAFKA_PORT:-19092}"
data="${CRM_KAFKA_DATA:-$cache/data}"
start_timeout="${CRM_KAFKA_START_TIMEOUT:-90}"
stop_timeout="${CRM_KAFKA_STOP_TIMEOUT:-60}"
heap="${CRM_KAFKA_HEAP:--Xms128m -Xmx512m}"

die() {
    echo "kafka.sh: $*" >&2
    exit 1
}
say() { echo "kafka.sh: $*"; }

[[ "$port" =~ ^[0-9]+$ ]] && ((port > 0 && port < 65535)) ||
    die "CRM_KAFKA_PORT='$port' is not a port number (1-65534; the controller uses port + 1)"
[[ "$start_timeout" =~ ^[0-9]+$ ]] || die "CRM_KAFKA_START_TIMEOUT='$start_timeout' is not a number of seconds"
[[ "$stop_timeout" =~ ^[0-9]+$ ]] || die "CRM_KAFKA_STOP_TIMEOUT='$stop_timeout' is not a number of seconds"
ctrl_port=$((port + 1))

props="$data/server.properties"
pid_file="$data/broker.pid"
log_file="$data/broker.log"
log_dirs="$data/kraft-logs"
formatted_marker="$data/formatted-for-port"

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed; $2"; }

# ---- fetch ----------------------------------------------------------------

pom_digest() { sha256sum "$here/pom.xml" | cut -d' ' -f1; }

fetch() {
    mkdir -p "$cache"
    local digest
    digest="$(pom_digest)"
    if [[ -f "$lib/.pom-sha256" && "$(cat "$lib/.pom-sha256")" == "$digest" ]]; then
        say "jars already in $lib"
        return 0
    fi
    need mvn "install Maven 3 (apt-get install maven)"
    need java "install a JDK 17+ (apt-get install openjdk-17-jre-headless)"
    # One fetch at a time per cache (parallel CI jobs on one machine share it).
    exec 9>"$cache/.fetch.lock"
    flock 9
    if [[ -f "$lib/.pom-sha256" && "$(cat "$lib/.pom-sha256")" == "$digest" ]]; then
        exec 9>&- # the broker must not inherit the lock
        say "jars already in $lib"
        return 0
    fi
    say "fetching the Kafka broker jars from Maven Central into $lib"
    local tmp="$cache/lib.tmp.$$"
    rm -rf "$tmp"
    if ! mvn -B -q -Dstyle.color=never -f "$here/pom.xml" -Dmaven.repo.local="$m2" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime; then
        rm -rf "$tmp"
        die "Maven could not fetch the broker jars (see its output above); check network access to Maven Central and $m2"
    fi
    ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "the fetch finished but $tmp has no kafka_2.13 jar"
    echo "$digest" >"$tmp/.pom-sha256"
    rm -rf "$lib"
    mv "$tmp" "$lib"
    exec 9>&- # the broker must not inherit the lock
    say "fetched $(find "$lib" -name '*.jar' | wc -l) jars ($(du -sh "$lib" | cut -f1))"
}

# ---- process helpers ------------------------------------------------------

# Alive = exists and is not a zombie (an exited broker can linger as a zombie
# until its parent reaps it, and `kill -0` still succeeds on a zombie).
alive() {
    local pid="$1" state
    [[ -r "/proc/$pid/stat" ]] || return 1
    # Field 3 after the "(comm)" field, which may contain spaces.
    state="$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# The pid in the pid file, if it is our broker and alive (guards against pid reuse).
running_pid() {
    [[ -f "$pid_file" ]] || return 1
    local pid
    pid="$(cat "$pid_file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "kafka.Kafka $props" || return 1
    echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

log_tail() {
    if [[ -f "$log_file" ]]; then
        echo "---- last 40 lines of $log_file ----" >&2
        tail -n 40 "$log_file" >&2
        echo "----" >&2
    fi
}

# ---- start ----------------------------------------------------------------

cluster_id() {
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" != -* ]] && break
    done
    echo "$id"
}

write_properties() {
    mkdir -p "$data"
    cat >"$props" <<EOF
# Written by deploy/kafka/kafka.sh; rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$ctrl_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctrl_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctrl_port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$log_dirs
num.partitions=3
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
auto.create.topics.enable=false
# The default 128 MB dedupe buffer runs a small heap out of memory at start.
log.cleaner.dedupe.buffer.size=16777216
EOF
}

format_storage() {
    if [[ -f "$log_dirs/meta.properties" ]]; then
        local was
        was="$(cat "$formatted_marker" 2>/dev/null || echo unknown)"
        [[ "$was" == "$port" ]] ||
            die "$data was formatted for port $was, not $port (the controller address is stored in it); use CRM_KAFKA_PORT=$was, another CRM_KAFKA_DATA, or remove $data"
        return 0
    fi
    local id
    id="$(cluster_id)"
    say "formatting KRaft storage in $log_dirs (cluster id $id)"
    java -cp "$lib/*" -Dlog4j2.configurationFile="$here/log4j2-tools.properties" \
        kafka.tools.StorageTool format --standalone -t "$id" -c "$props" >"$data/format.log" 2>&1 ||
        {
            cat "$data/format.log" >&2
            die "formatting storage in $log_dirs failed (output above)"
        }
    echo "$port" >"$formatted_marker"
}

start() {
    local pid
    if pid="$(running_pid)"; then
        say "already running (pid $pid) at 127.0.0.1:$port"
        return 0
    fi
    need java "install a JDK 17+ (apt-get install openjdk-17-jre-headless)"
    if port_open "$port" || port_open "$ctrl_port"; then
        die "port $port or $ctrl_port on 127.0.0.1 is taken by another process; stop it or pick another CRM_KAFKA_PORT"
    fi
    fetch
    write_properties
    format_storage
    [[ -f "$log_file" ]] && mv -f "$log_file" "$log_file.prev"
    rm -f "$pid_file"

    # shellcheck disable=SC2086 # heap holds several flags on purpose
    nohup java $heap -XX:+ExitOnOutOfMemoryError \
        -Dlog4j2.configurationFile="$here/log4j2.properties" \
        -cp "$lib/*" kafka.Kafka "$props" </dev/null >"$log_file" 2>&1 &
    pid=$!
    echo "$pid" >"$pid_file"
    say "started pid $pid, waiting up to ${start_timeout}s for 127.0.0.1:$port (log $log_file)"

    local waited=0
    while :; do
        if ! alive "$pid"; then
            log_tail
            rm -f "$pid_file"
            die "the broker exited during start-up (log tail above)"
        fi
        if grep -q 'Kafka Server started' "$log_file" 2>/dev/null && port_open "$port"; then
            break
        fi
        if ((waited >= start_timeout * 2)); then
            log_tail
            # A half-started broker would make the next `start` report "already running".
            stop >&2
            die "the broker was not ready after ${start_timeout}s (log tail above) and was stopped; raise CRM_KAFKA_START_TIMEOUT on a loaded machine"
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    say "ready at 127.0.0.1:$port after ~$((waited / 2))s (pid $pid); export CRM_KAFKA_BOOTSTRAP=127.0.0.1:$port"
}

# ---- stop / status / topics ----------------------------------------------

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$pid_file"
        say "not running"
        return 0
    fi
    say "stopping pid $pid (SIGTERM)"
    kill -TERM "$pid" 2>/dev/null || true
    local waited=0
    while alive "$pid"; do
        if ((waited >= stop_timeout * 2)); then
            say "pid $pid did not stop after ${stop_timeout}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            break
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    rm -f "$pid_file"
    if grep -q 'Transition from SHUTTING_DOWN to SHUTDOWN' "$log_file" 2>/dev/null; then
        say "stopped cleanly"
    else
        say "stopped (no clean-shutdown line in $log_file)"
    fi
}

status() {
    local pid
    if pid="$(running_pid)"; then
        if port_open "$port"; then
            say "running (pid $pid) at 127.0.0.1:$port"
        else
            say "running (pid $pid) but 127.0.0.1:$port is not accepting connections yet"
        fi
        return 0
    fi
    say "not running (port $port, data $data)"
    return 3
}

topics() {
    running_pid >/dev/null || die "the broker is not running; run 'kafka.sh start' first"
    (($# > 0)) || set -- --list
    java -cp "$lib/*" -Dlog4j2.configurationFile="$here/log4j2-tools.properties" \
        org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" "$@"
}

cmd="${1:-}"
(($# > 0)) && shift
case "$cmd" in
fetch) fetch ;;
start) start ;;
stop) stop ;;
status) status ;;
topics) topics "$@" ;;
*)
    echo "usage: $0 {fetch|start|stop|status|topics [TopicCommand args]}" >&2
    exit 2
    ;;
esac
