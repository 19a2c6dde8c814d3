#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, from Debian's packages, for the workflow tests
# (tests/workflow/test_slurm.py) and CI (.ci/run). Needs root and Debian/Ubuntu; no systemd.
#
#   bash tests/slurm/cluster.sh start    install (first time), configure, start; wait for the node
#   bash tests/slurm/cluster.sh status   daemons, node state, accounting; exit 1 if not usable
#   bash tests/slurm/cluster.sh stop     stop the daemons this script started
#
# The cluster: ClusterName=earlyphase, one node (this host, at 127.0.0.1) with the machine's CPUs,
# its memory minus headroom and two fake GPUs (gres gpu:fake:2 backed by /dev/fakegpu0-1, which
# are symlinks to /dev/null: enough for SLURM to allocate them and set CUDA_VISIBLE_DEVICES; the
# jobs themselves fall back to the CPU), one partition `debug` (the default), and job accounting
# through slurmdbd + a local MariaDB so that `sacct` works (the SLURM executor plugin polls job
# states with it). Account `earlyphase` holds user root.
#
# Settings (environment):
#   EARLYPHASE_SLURM_ACCOUNTING=0   no slurmdbd/MariaDB (faster; sacct unavailable, so jobs must
#                                   be polled with `--slurm-status-command squeue`; MinJobAge=300)
#   EARLYPHASE_SLURM_WAIT=90        seconds to wait for each daemon / the node
# Files: /etc/slurm/{slurm,gres,slurmdbd}.conf (refused if an existing one was not written by
# this script), logs in /var/log/slurm/, state in /var/lib/slurm/, /run/earlyphase-slurm/.
set -euo pipefail

ACCOUNTING=${EARLYPHASE_SLURM_ACCOUNTING:-1}
WAIT=${EARLYPHASE_SLURM_WAIT:-90}
CLUSTER=earlyphase
ACCOUNT=earlyphase
MARKER="# written by tests/slurm/cluster.sh"
RUN=/run/earlyphase-slurm          # pid files of the daemons this script started
ETC=/etc/slurm
LOGDIR=/var/log/slurm
DB_PASS=earlyphase-test            # a local test database reachable only through its socket

log() { printf 'cluster.sh: %s\n' "$*"; }
die() { printf 'cluster.sh: ERROR: %s\n' "$*" >&2; exit 1; }
t0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - t0 )) s"; }

need_root() { [[ $(id -u) == 0 ]] || die "must run as root (apt-get, daemons, /etc/slurm)"; }

# ---- processes ----------------------------------------------------------------------------------
pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for DESCRIPTION COMMAND...: poll until the command succeeds
    local what=$1; shift
    local i
    for ((i = 0; i < WAIT * 2; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    return 1
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE: TERM, wait up to 20 s, then KILL
    local name=$1 pidfile=$2 pid i
    if ! pid_alive "$pidfile"; then rm -f "$pidfile"; return 0; fi
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    log "stopped $name (pid $pid)"
}

# ---- install ------------------------------------------------------------------------------------
install_packages() {
    local pkgs=(munge slurm-client slurmctld slurmd) missing=() p
    [[ $ACCOUNTING == 1 ]] && pkgs+=(slurmdbd mariadb-server)
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        log "packages already installed: ${pkgs[*]}"
        return
    fi
    command -v apt-get >/dev/null || die "apt-get not found: this script needs Debian/Ubuntu"
    log "installing ${missing[*]} ..."
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends
               -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    if ! "${apt[@]}" "${missing[@]}" >/tmp/earlyphase-slurm-apt.log 2>&1; then
        log "install failed; running apt-get update and retrying"
        apt-get update -qq >>/tmp/earlyphase-slurm-apt.log 2>&1 || true
        "${apt[@]}" "${missing[@]}" >>/tmp/earlyphase-slurm-apt.log 2>&1 \
            || { tail -20 /tmp/earlyphase-slurm-apt.log >&2; die "apt-get install ${missing[*]} failed"; }
    fi
    log "installed ${missing[*]} ($(elapsed))"
}

# ---- configuration ------------------------------------------------------------------------------
write_conf() {  # write_conf PATH MODE OWNER < content: refuse foreign files; 0 = changed
    local path=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f $path ]] && ! grep -qF "$MARKER" "$path"; then
        rm -f "$tmp"
        die "$path exists and was not written by this script; refusing to overwrite it"
    fi
    if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
        return 1
    fi
    install -m "$mode" -o "$owner" -g "$owner" "$tmp" "$path"
    rm -f "$tmp"
    log "wrote $path"
    return 0
}

node_hardware() {  # sets CPUS BOARDS SOCKETS CORES THREADS MEM_MB for this host
    local line
    line=$(slurmd -C 2>/dev/null | head -1) || true
    CPUS=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$line")
    BOARDS=$(sed -n 's/.*Boards=\([0-9]*\).*/\1/p' <<<"$line")
    SOCKETS=$(sed -n 's/.*SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$line")
    CORES=$(sed -n 's/.*CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$line")
    THREADS=$(sed -n 's/.*ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$line")
    [[ -n $CPUS ]] || { CPUS=$(nproc); BOARDS=1; SOCKETS=1; CORES=$CPUS; THREADS=1; }
    local total_mb headroom
    total_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
    headroom=$(( total_mb / 5 > 1024 ? total_mb / 5 : 1024 ))   # 20%, at least 1 GB
    MEM_MB=$(( total_mb - headroom ))
    ((MEM_MB > 512)) || die "only ${total_mb} MB of memory; too little for a test cluster"
    # profiles/slurm asks for production sizes (up to 8 GB for prepare_data, 3 GB per training
    # thread); the smoke jobs need far less. On a small machine, declare 16 GB anyway
    # (config_overrides stops slurmd from draining the node for it; nothing enforces memory here).
    SLURMD_PARAMS=""
    if ((MEM_MB < 16384)); then
        log "declaring RealMemory=16384 MB (machine: ${total_mb} MB) with SlurmdParameters=config_overrides"
        MEM_MB=16384
        SLURMD_PARAMS="SlurmdParameters=config_overrides"
    fi
}

configure() {
    local host changed=no
    host=$(hostname -s)
    node_hardware
    install -d -m 0755 "$ETC" "$RUN"
    install -d -m 0755 -o slurm -g slurm "$LOGDIR" /var/lib/slurm /var/lib/slurm/slurmctld /run/slurm
    install -d -m 0755 /var/lib/slurm/slurmd
    # Fake GPUs: slurmd 22.05 wants device files (a count alone or a regular file is rejected).
    local i
    for i in 0 1; do
        [[ -e /dev/fakegpu$i ]] || ln -s /dev/null "/dev/fakegpu$i"
    done

    local acct_lines="AccountingStorageType=accounting_storage/none"
    if [[ $ACCOUNTING == 1 ]]; then
        acct_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment"
    fi
    write_conf "$ETC/slurm.conf" 0644 root <<EOF && changed=yes
$MARKER: a single-node test cluster
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
GresTypes=gpu
MpiDefault=none
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol for 5 minutes (>= 3x the plugin's first poll).
MinJobAge=300
KillWait=30
InactiveLimit=0
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$SLURMD_PARAMS
$acct_lines
NodeName=$host NodeAddr=127.0.0.1 CPUs=$CPUS Boards=$BOARDS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM_MB Gres=gpu:fake:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    write_conf "$ETC/gres.conf" 0644 root <<EOF && changed=yes
$MARKER
AutoDetect=off
Name=gpu Type=fake File=/dev/fakegpu[0-1]
EOF
    if [[ $ACCOUNTING == 1 ]]; then
        write_conf "$ETC/slurmdbd.conf" 0600 slurm <<EOF && changed=yes
$MARKER
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=/run/slurm/slurmdbd.pid
LogFile=$LOGDIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    fi
    CONFIG_CHANGED=$changed
    log "node $host: CPUs=$CPUS RealMemory=${MEM_MB} MB, gres gpu:fake:2; accounting=$ACCOUNTING"
}

# ---- daemons ------------------------------------------------------------------------------------
start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "munged already running"
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        if command -v mungekey >/dev/null; then mungekey --create --force >/dev/null
        else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
        log "created /etc/munge/munge.key"
    fi
    install -d -m 0755 -o munge -g munge /run/munge
    runuser -u munge -- /usr/sbin/munged
    cp /run/munge/munged.pid "$RUN/munged.pid"
    wait_for munged sh -c 'munge -n | unmunge' || die "munged did not start (see /var/log/munge/munged.log)"
    log "started munged (pid $(cat "$RUN/munged.pid"))"
}

mysql_up() { mariadb-admin --protocol=socket ping >/dev/null 2>&1; }

start_mariadb() {
    if mysql_up; then
        log "mariadb already running"
    else
        install -d -m 0755 -o mysql -g mysql /run/mysqld
        if [[ ! -d /var/lib/mysql/mysql ]]; then
            mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
        fi
        setsid -f /usr/sbin/mariadbd --user=mysql --skip-networking \
            --pid-file=/run/mysqld/mysqld.pid --socket=/run/mysqld/mysqld.sock \
            >>"$LOGDIR/mariadb.log" 2>&1 </dev/null
        wait_for mariadb mysql_up || die "mariadbd did not start (see $LOGDIR/mariadb.log)"
        cp /run/mysqld/mysqld.pid "$RUN/mariadbd.pid"
        log "started mariadbd (pid $(cat "$RUN/mariadbd.pid"))"
    fi
    mariadb --protocol=socket <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start_slurmdbd() {
    if pid_alive /run/slurm/slurmdbd.pid; then
        log "slurmdbd already running"
    else
        slurmdbd
        wait_for slurmdbd pid_alive /run/slurm/slurmdbd.pid \
            || die "slurmdbd did not start (see $LOGDIR/slurmdbd.log)"
        cp /run/slurm/slurmdbd.pid "$RUN/slurmdbd.pid"
        log "started slurmdbd (pid $(cat "$RUN/slurmdbd.pid"))"
    fi
    wait_for "sacctmgr" sacctmgr -n list cluster \
        || die "slurmdbd does not answer sacctmgr (see $LOGDIR/slurmdbd.log)"
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
        log "registered cluster $CLUSTER"
    fi
    if ! sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT"; then
        sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" \
            Description="earlyphase tests" Organization=earlyphase >/dev/null
        log "added account $ACCOUNT"
    fi
    if ! sacctmgr -n -P list assoc user=root format=account | grep -qx "$ACCOUNT"; then
        sacctmgr -i add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
        log "added user root to account $ACCOUNT"
    fi
}

start_slurm() {
    if pid_alive /run/slurm/slurmctld.pid && [[ $CONFIG_CHANGED == no ]]; then
        log "slurmctld already running"
    else
        stop_pidfile slurmctld /run/slurm/slurmctld.pid
        slurmctld
        wait_for slurmctld scontrol ping || die "slurmctld did not start (see $LOGDIR/slurmctld.log)"
        cp /run/slurm/slurmctld.pid "$RUN/slurmctld.pid"
        log "started slurmctld (pid $(cat "$RUN/slurmctld.pid"))"
    fi
    if pid_alive /run/slurm/slurmd.pid && [[ $CONFIG_CHANGED == no ]]; then
        log "slurmd already running"
    else
        stop_pidfile slurmd /run/slurm/slurmd.pid
        slurmd
        wait_for slurmd pid_alive /run/slurm/slurmd.pid || die "slurmd did not start (see $LOGDIR/slurmd.log)"
        cp /run/slurm/slurmd.pid "$RUN/slurmd.pid"
        log "started slurmd (pid $(cat "$RUN/slurmd.pid"))"
    fi
}

node_ready() { sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)$'; }

wait_node() {
    local host
    host=$(hostname -s)
    # A node drained by an earlier, broken configuration comes back once it registers again.
    scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
    if ! wait_for "node $host" node_ready; then
        sinfo -N -l >&2 || true
        sinfo -R >&2 || true
        tail -5 "$LOGDIR/slurmd.log" "$LOGDIR/slurmctld.log" >&2 || true
        die "node $host did not become idle within ${WAIT} s"
    fi
    log "node $host is $(sinfo -h -N -o '%T' | head -1): $(sinfo -h -o '%P %D nodes, %c CPUs, %m MB, %G')"
}

# ---- commands -----------------------------------------------------------------------------------
cmd_start() {
    need_root
    install_packages
    configure
    start_munge
    if [[ $ACCOUNTING == 1 ]]; then
        start_mariadb
        start_slurmdbd
    fi
    start_slurm
    wait_node
    if [[ $ACCOUNTING == 1 ]]; then
        wait_for sacct sacct -n -X || die "sacct does not work (see $LOGDIR/slurmdbd.log)"
    fi
    if [[ $ACCOUNTING == 1 ]]; then
        log "cluster $CLUSTER is up ($(elapsed)); partition debug, account $ACCOUNT, sacct works"
    else
        log "cluster $CLUSTER is up ($(elapsed)); partition debug, no accounting (use squeue)"
    fi
}

cmd_stop() {
    need_root
    # Only daemons this script started (their pid files are in $RUN), newest first.
    local name
    for name in slurmd slurmctld slurmdbd mariadbd munged; do
        [[ -f $RUN/$name.pid ]] && stop_pidfile "$name" "$RUN/$name.pid"
    done
    log "stopped ($(elapsed))"
}

cmd_status() {
    local ok=0 name
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        if pid_alive "$RUN/$name.pid"; then log "$name: running (pid $(cat "$RUN/$name.pid"))"
        else log "$name: not started by this script"; fi
    done
    command -v sinfo >/dev/null || { log "sinfo not installed"; return 1; }
    if node_ready; then log "node: $(sinfo -h -N -o '%N %T %G')"; else log "node: not ready"; ok=1; fi
    if sacct -n -X >/dev/null 2>&1; then log "sacct: works"; else log "sacct: unavailable"; fi
    return $ok
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
