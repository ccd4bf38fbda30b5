#!/usr/bin/env bash
# Start/stop a throw-away one-node Ceph cluster (1 mon, 1 memstore OSD, no mgr)
# with a RADOS Gateway (S3) on 127.0.0.1, for integration tests.
#
#   tests/s3/radosgw.sh install        # apt-get install radosgw ceph-mon ceph-osd (if missing)
#   tests/s3/radosgw.sh start DIR      # everything lives under DIR; writes DIR/env
#   tests/s3/radosgw.sh stop DIR       # kill what start started, remove DIR
#
# See tests/s3/README.md.
set -euo pipefail

ACCESS_KEY=dscotest
SECRET_KEY=dscotestsecret
RGW_UID=dscotest
START_TIMEOUT=${RADOSGW_START_TIMEOUT:-120}   # seconds, whole start sequence
STOP_GRACE=${RADOSGW_STOP_GRACE:-15}          # seconds before SIGKILL

log() { echo "radosgw.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

python_bin() {
    if command -v python3 >/dev/null 2>&1; then echo python3; else echo /usr/bin/python3; fi
}

free_port() {
    "$(python_bin)" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# ---------------------------------------------------------------- install
cmd_install() {
    local missing=0 b
    for b in radosgw radosgw-admin ceph ceph-mon ceph-osd monmaptool uuidgen curl; do
        command -v "$b" >/dev/null 2>&1 || missing=1
    done
    [ "$missing" = 0 ] && return 0

    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo: cannot install ceph packages"
        sudo=(sudo)
    fi
    local aptlog
    aptlog=$(mktemp /tmp/radosgw-apt.XXXXXX.log)
    export DEBIAN_FRONTEND=noninteractive
    # Only refresh the package lists if apt does not know the package yet.
    local policy
    policy=$(apt-cache policy radosgw 2>/dev/null || true)
    if ! grep -q 'Candidate: [0-9]' <<<"$policy"; then
        log "apt-get update"
        "${sudo[@]}" apt-get update -q >>"$aptlog" 2>&1 \
            || { tail -n 30 "$aptlog" >&2; die "apt-get update failed (log: $aptlog)"; }
    fi
    log "apt-get install radosgw ceph-mon ceph-osd (log: $aptlog)"
    "${sudo[@]}" apt-get install -y -q --no-install-recommends radosgw ceph-mon ceph-osd ceph-common uuid-runtime curl \
        >>"$aptlog" 2>&1 \
        || { tail -n 30 "$aptlog" >&2; die "apt-get install failed (log: $aptlog)"; }
    rm -f "$aptlog"
    command -v radosgw >/dev/null 2>&1 || die "radosgw still not on PATH after install"
}

# ---------------------------------------------------------------- helpers for start/stop
# Every process we start is recorded as DIR/pids/NAME.pid (written by us, not
# by the daemon, so there is no window where a process runs without a pid file).
spawn() {  # spawn NAME CMD...   -> runs CMD in the foreground of a new session, detached
    local name=$1; shift
    setsid nohup "$@" </dev/null >"$DIR/log/$name.out" 2>&1 &
    echo $! >"$DIR/pids/$name.pid"
}

is_ours() {  # is_ours PID -> true if PID is alive and was started with our ceph.conf
    local pid=$1
    local args
    args=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    grep -qxF "$DIR/ceph.conf" <<<"$args"
}

stop_one() {  # stop_one NAME SIG -> send SIG, wait up to STOP_GRACE s, then SIGKILL
    local name=$1 sig=$2 pid
    [ -f "$DIR/pids/$name.pid" ] || return 0
    pid=$(cat "$DIR/pids/$name.pid" 2>/dev/null || true)
    if [[ "$pid" =~ ^[0-9]+$ ]] && is_ours "$pid"; then
        kill "-$sig" "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + STOP_GRACE))
        while is_ours "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
        if is_ours "$pid"; then
            log "$name (pid $pid) still running after ${STOP_GRACE}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 10))
            while is_ours "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
            is_ours "$pid" && log "WARNING: $name (pid $pid) survived SIGKILL"
        fi
    fi
    rm -f "$DIR/pids/$name.pid"
}

kill_all() {  # clients first, mon last (the OSD tells the mon it is going down)
    [ -d "$DIR/pids" ] || return 0
    # radosgw keeps no state of its own but takes ~3 s to exit on SIGTERM
    stop_one rgw KILL
    stop_one osd TERM
    stop_one mon TERM
}

ceph_() { timeout 20 ceph -c "$DIR/ceph.conf" --connect-timeout 10 "$@"; }

remaining() { echo $((DEADLINE - SECONDS)); }

check_deadline() {
    [ "$SECONDS" -lt "$DEADLINE" ] || die "timed out after ${START_TIMEOUT}s $*"
}

on_start_error() {
    local rc=$?
    trap - ERR EXIT
    [ "$rc" = 0 ] && return 0
    log "start failed (rc=$rc); stopping what was started. Logs kept in $DIR/log:"
    local f
    for f in "$DIR"/log/*; do
        [ -s "$f" ] || continue
        echo "----- $f (tail)" >&2
        tail -n 25 "$f" >&2
    done
    kill_all || true
    exit "$rc"
}

# ---------------------------------------------------------------- start
cmd_start() {
    cmd_install
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd -P)
    [ -z "$(ls -A "$DIR")" ] || die "$DIR is not empty (already started? run: $0 stop $DIR)"
    mkdir -p "$DIR"/{run,log,pids,mon,osd,tmp}
    trap on_start_error EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM HUP
    DEADLINE=$((SECONDS + START_TIMEOUT))

    local fsid mon_port rgw_port
    fsid=$(uuidgen)
    mon_port=$(free_port)
    rgw_port=${RADOSGW_PORT:-$(free_port)}
    while [ "$rgw_port" = "$mon_port" ]; do rgw_port=$(free_port); done

    cat >"$DIR/ceph.conf" <<EOF
[global]
fsid = $fsid
mon_host = v2:127.0.0.1:$mon_port
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_msgr1 = false
ms_bind_msgr2 = true
ms_bind_ipv6 = false

# no cephx; with auth "none" every messenger mode must be crc, otherwise
# clients fail with "get_initial_auth_request returned -13" and hang ~5 min
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_cluster_mode = crc
ms_service_mode = crc
ms_client_mode = crc
ms_mon_cluster_mode = crc
ms_mon_service_mode = crc
ms_mon_client_mode = crc
keyring = $DIR/keyring

# everything under DIR
run_dir = $DIR/run
admin_socket = $DIR/run/\$name.asok
pid_file = $DIR/run/\$name.pid
log_file = $DIR/log/\$name.log
crash_dir = $DIR/tmp/crash
mon_data = $DIR/mon/\$id
osd_data = $DIR/osd/\$id
log_to_stderr = false
err_to_stderr = true
log_to_syslog = false
debug_ms = 0
debug_mon = 1
debug_osd = 1
debug_rgw = 1

# single OSD, replica 1, crush picks OSDs not hosts, no mgr (no autoscaler)
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
mon_max_pg_per_osd = 1000
osd_crush_chooseleaf_type = 0
mon_data_avail_crit = 1
mon_data_avail_warn = 2
# the mon batches map changes for paxos_propose_interval (1 s) each; rgw's
# first start makes ~20 of them (pools, application tags), so make it short
paxos_propose_interval = 0.05
paxos_min_wait = 0.01

# OSD data lives in RAM (memstore); limit is the max, not preallocated
osd_objectstore = memstore
memstore_device_bytes = 4294967296
osd_max_object_size = 134217728

[client.rgw]
rgw_frontends = beast endpoint=127.0.0.1:$rgw_port
rgw_thread_pool_size = 64
EOF
    : >"$DIR/keyring"

    # ---- mon
    log "mon on v2:127.0.0.1:$mon_port"
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$DIR/tmp/monmap" \
        >"$DIR/log/mkfs-mon.out" 2>&1
    ceph-mon -c "$DIR/ceph.conf" --mkfs -i a --monmap "$DIR/tmp/monmap" \
        >>"$DIR/log/mkfs-mon.out" 2>&1
    spawn mon ceph-mon -f -c "$DIR/ceph.conf" -i a --setuser root --setgroup root
    until ceph_ mon stat >/dev/null 2>&1; do
        check_deadline "waiting for ceph-mon"
        is_ours "$(cat "$DIR/pids/mon.pid")" || die "ceph-mon exited"
        sleep 0.5
    done

    # ---- osd (memstore)
    # the uuid must be the same for "osd create" and "ceph-osd --mkfs", else the
    # mon silently ignores the OSD's boot message ("clashes with existing osd")
    local osd_id osd_uuid
    osd_uuid=$(uuidgen)
    osd_id=$(ceph_ osd create "$osd_uuid")
    [ "$osd_id" = 0 ] || die "unexpected osd id '$osd_id'"
    mkdir -p "$DIR/osd/0"
    ceph-osd -c "$DIR/ceph.conf" -i 0 --mkfs --osd-uuid "$osd_uuid" >"$DIR/log/mkfs-osd.out" 2>&1
    ceph_ osd crush add osd.0 1.0 root=default >/dev/null 2>&1
    spawn osd ceph-osd -f -c "$DIR/ceph.conf" -i 0 --setuser root --setgroup root
    until [[ "$(ceph_ osd stat -f json 2>/dev/null || true)" == *'"num_up_osds":1'* ]]; do
        check_deadline "waiting for ceph-osd to come up"
        is_ours "$(cat "$DIR/pids/osd.pid")" || die "ceph-osd exited"
        sleep 0.5
    done
    log "osd.0 up after ${SECONDS}s"

    # ---- rgw user (this also creates the realm/zone and the rgw pools)
    timeout "$(remaining)" radosgw-admin -c "$DIR/ceph.conf" -n client.rgw \
        user create --uid "$RGW_UID" --display-name "dsco test" \
        --access-key "$ACCESS_KEY" --secret "$SECRET_KEY" \
        >"$DIR/log/user-create.out" 2>&1 \
        || die "radosgw-admin user create failed or timed out"

    # ---- radosgw
    spawn rgw radosgw -f -c "$DIR/ceph.conf" -n client.rgw --setuser root --setgroup root
    local url="http://127.0.0.1:$rgw_port"
    until curl -s -o /dev/null --max-time 2 "$url/"; do
        check_deadline "waiting for radosgw at $url"
        is_ours "$(cat "$DIR/pids/rgw.pid")" || die "radosgw exited"
        sleep 0.5
    done

    cat >"$DIR/env" <<EOF
export AWS_ENDPOINT_URL=$url
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
export AWS_DEFAULT_REGION=us-east-1
export AWS_REQUEST_CHECKSUM_CALCULATION=WHEN_REQUIRED
export AWS_RESPONSE_CHECKSUM_VALIDATION=WHEN_REQUIRED
export DSCO_RADOSGW=1
EOF
    trap - EXIT
    log "radosgw ready after ${SECONDS}s"
    echo "$url"
}

# ---------------------------------------------------------------- stop
cmd_stop() {
    if [ ! -e "$DIR" ]; then
        return 0
    fi
    DIR=$(cd "$DIR" && pwd -P)
    # refuse to rm -rf something that does not look like ours
    if [ -n "$(ls -A "$DIR")" ] && [ ! -f "$DIR/ceph.conf" ] && [ ! -d "$DIR/pids" ]; then
        die "$DIR does not look like a radosgw.sh directory; not removing it"
    fi
    kill_all
    rm -rf "$DIR"
}

usage() {
    echo "usage: $0 install | start DIR | stop DIR" >&2
    exit 2
}

case "${1:-}" in
    install) [ $# = 1 ] || usage; cmd_install ;;
    start)   [ $# = 2 ] || usage; DIR=$2; cmd_start ;;
    stop)    [ $# = 2 ] || usage; DIR=$2; cmd_stop ;;
    *) usage ;;
esac
