#!/usr/bin/env bash
# A real SLURM cluster on loopback for development and CI: munged + slurmctld + N slurmd.
#
#   infra/slurm/cluster.sh up [--nodes N] [--base-dir DIR]   start (idempotent), print SLURM_CONF
#   infra/slurm/cluster.sh status [--base-dir DIR]            exit 0 when up, 3 when down
#   infra/slurm/cluster.sh down [--base-dir DIR] [--purge]    cancel our jobs, stop our daemons
#
# Every path (config, state, spool, logs, pid files, munge key and socket) lives under the base
# directory, so the cluster never touches /etc/slurm and `down` stops only the PIDs it started.
# N > 1 emulates a multi-node cluster with one `slurmd -N nodeI` per node on 127.0.0.1.
# Accounting runs as on a real cluster: slurmdbd on a private MariaDB (its own data directory,
# socket and port under the base directory), so `sacct` reports end states, and finished jobs leave
# the controller after MinJobAge (15 s) as they do elsewhere (300 s by default). Every node also
# offers 2 fake GPUs of type "a100" (gres without device files): a job that asks for GPUs is
# scheduled as on a GPU cluster and finds no CUDA, which is what the job's preflight must catch.
# Environment: EVE_SLURM_BASE_DIR (default /tmp/eve-slurm), EVE_SLURM_PORT (slurmctld port,
# default 6817; slurmd ports follow it, slurmdbd is port+50, MariaDB port+51),
# EVE_SLURM_CPUS_PER_NODE (default: nproc), EVE_SLURM_ACCOUNTING=0 to run without slurmdbd.
set -euo pipefail

command_name=${1:-}
shift || true
base_dir=${EVE_SLURM_BASE_DIR:-/tmp/eve-slurm}
node_count=1
purge=0
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) node_count=$2; shift 2 ;;
    --base-dir) base_dir=$2; shift 2 ;;
    --purge) purge=1; shift ;;
    *) echo "cluster.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$node_count" in ''|*[!0-9]*|0) echo "cluster.sh: --nodes must be a positive integer" >&2; exit 2 ;; esac

ctld_port=${EVE_SLURM_PORT:-6817}
dbd_port=$(( ctld_port + 50 ))
mysql_port=$(( ctld_port + 51 ))
accounting=${EVE_SLURM_ACCOUNTING:-1}
fake_gpus_per_node=2
# nproc honours OMP_NUM_THREADS / OMP_THREAD_LIMIT (a process that started Dask workers has OMP_NUM_THREADS=1):
# the node's cores are what this machine gives the process, not what one library asked of its threads.
cpus_per_node=${EVE_SLURM_CPUS_PER_NODE:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}
conf=$base_dir/etc/slurm.conf
munge_socket=$base_dir/munge/run/munge.socket.2
export SLURM_CONF=$conf

log() { echo "cluster.sh: $*" >&2; }

pid_alive() {  # pid file -> 0 when its process runs
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
  local missing=()
  command -v munged >/dev/null || [ -x /usr/sbin/munged ] || missing+=(munge)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  [ -x /usr/sbin/slurmctld ] || missing+=(slurmctld)
  [ -x /usr/sbin/slurmd ] || missing+=(slurmd)
  if [ "$accounting" = 1 ]; then
    [ -x /usr/sbin/slurmdbd ] || missing+=(slurmdbd)
    [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
  fi
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    log "missing packages (${missing[*]}) and not root: cannot install"; exit 4
  fi
  log "installing ${missing[*]} (apt-get)"
  # Other users of this machine may hold the dpkg lock for a while: wait for it instead of failing.
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
    "${missing[@]}" >"${base_dir}/log/apt.log" 2>&1 || {
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q >>"${base_dir}/log/apt.log" 2>&1
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
        "${missing[@]}" >>"${base_dir}/log/apt.log" 2>&1 || { log "apt-get failed, see ${base_dir}/log/apt.log"; exit 4; }
    }
}

write_config() {
  local host mem_total_mb real_memory_mb i
  host=$(hostname -s)
  mem_total_mb=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
  real_memory_mb=$(( mem_total_mb * 8 / 10 / node_count ))
  mkdir -p "$base_dir/etc" "$base_dir/state" "$base_dir/log" "$base_dir/run"
  {
    echo "# Written by infra/slurm/cluster.sh for $node_count emulated node(s); regenerated on every 'up'."
    echo "ClusterName=eve-local"
    echo "SlurmctldHost=${host}(127.0.0.1)"
    echo "SlurmctldPort=$ctld_port"
    echo "AuthType=auth/munge"
    # cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
    echo "AuthInfo=socket=$munge_socket,cred_expire=10"
    echo "CredType=cred/munge"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "StateSaveLocation=$base_dir/state"
    echo "SlurmdSpoolDir=$base_dir/spool/%n"
    echo "SlurmctldPidFile=$base_dir/run/slurmctld.pid"
    echo "SlurmdPidFile=$base_dir/run/slurmd-%n.pid"
    echo "SlurmctldLogFile=$base_dir/log/slurmctld.log"
    echo "SlurmdLogFile=$base_dir/log/slurmd-%n.log"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "MpiDefault=none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core_Memory"
    echo "DefMemPerCPU=512"
    # batch_sched_delay=0: otherwise every submission waits ~3 s for the scheduler.
    echo "SchedulerParameters=batch_sched_delay=0,sched_interval=5"
    echo "JobRequeue=1"
    if [ "$accounting" = 1 ]; then
      echo "AccountingStorageType=accounting_storage/slurmdbd"
      echo "AccountingStorageHost=127.0.0.1"
      echo "AccountingStoragePort=$dbd_port"
      # The munge socket for the connection to slurmdbd (clients such as sacct use it too).
      echo "AccountingStoragePass=$munge_socket"
      echo "AccountingStorageTRES=gres/gpu"
      # Finished jobs leave the controller as on a production cluster; sacct knows them after that.
      echo "MinJobAge=15"
    else
      # No accounting: keep finished jobs visible to squeue/scontrol long enough for any poller.
      echo "MinJobAge=3600"
    fi
    echo "GresTypes=gpu"
    echo "KillWait=15"
    echo "ReturnToService=2"
    echo "SlurmdTimeout=60"
    echo "InactiveLimit=0"
    echo "JobCompType=jobcomp/filetxt"
    echo "JobCompLoc=$base_dir/log/jobcomp.txt"
    echo "JobAcctGatherType=jobacct_gather/none"
    for i in $(seq 1 "$node_count"); do
      echo "NodeName=node$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$(( ctld_port + i )) CPUs=$cpus_per_node RealMemory=$real_memory_mb Gres=gpu:a100:$fake_gpus_per_node State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } >"$conf.tmp"
  mv "$conf.tmp" "$conf"
  # Fake GPUs: Slurm schedules GPUs only with device files; plain files stand in for /dev/nvidiaN
  # (task/none enforces no device access, so nothing opens them).
  mkdir -p "$base_dir/fake-dev"
  for i in $(seq 0 $(( fake_gpus_per_node - 1 ))); do : >"$base_dir/fake-dev/nvidia$i"; done
  {
    echo "# Fake GPUs for scheduling only (no GPU on this machine)."
    echo "AutoDetect=off"
    echo "Name=gpu Type=a100 File=$base_dir/fake-dev/nvidia[0-$(( fake_gpus_per_node - 1 ))]"
  } >"$base_dir/etc/gres.conf"
}

mysql_client() {
  mariadb --no-defaults --socket="$base_dir/mysql/run/mysqld.sock" -u root "$@"
}

start_accounting() {  # a private MariaDB and slurmdbd, then this cluster registered in it
  [ "$accounting" = 1 ] || return 0
  local data=$base_dir/mysql/data password_file=$base_dir/etc/slurmdbd.password
  mkdir -p "$base_dir/mysql/run" "$base_dir/mysql/log"
  if [ ! -d "$data/mysql" ]; then
    mariadb-install-db --no-defaults --user=root --datadir="$data" --auth-root-authentication-method=socket \
      >"$base_dir/mysql/log/install.log" 2>&1 || { log "mariadb-install-db failed, see $base_dir/mysql/log/install.log"; exit 5; }
  fi
  if ! pid_alive "$base_dir/mysql/run/mysqld.pid"; then
    setsid /usr/sbin/mariadbd --no-defaults --user=root --datadir="$data" --socket="$base_dir/mysql/run/mysqld.sock" \
      --port="$mysql_port" --bind-address=127.0.0.1 --pid-file="$base_dir/mysql/run/mysqld.pid" \
      --log-error="$base_dir/mysql/log/mysqld.log" --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
    wait_for 30 "MariaDB" mysql_client -e "select 1"
  fi
  if [ ! -s "$password_file" ]; then
    (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$password_file")
  fi
  local password
  password=$(cat "$password_file")
  mysql_client -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$password'; ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$password'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  (
    umask 077
    {
      echo "# Written by infra/slurm/cluster.sh; regenerated on every 'up'."
      echo "AuthType=auth/munge"
      echo "AuthInfo=socket=$munge_socket"
      echo "DbdAddr=127.0.0.1"
      echo "DbdHost=$(hostname -s)"
      echo "DbdPort=$dbd_port"
      echo "SlurmUser=root"
      echo "PidFile=$base_dir/run/slurmdbd.pid"
      echo "LogFile=$base_dir/log/slurmdbd.log"
      echo "StorageType=accounting_storage/mysql"
      echo "StorageHost=127.0.0.1"
      echo "StoragePort=$mysql_port"
      echo "StorageUser=slurm"
      echo "StoragePass=$password"
      echo "StorageLoc=slurm_acct_db"
    } >"$base_dir/etc/slurmdbd.conf"
  )
  if ! pid_alive "$base_dir/run/slurmdbd.pid"; then
    /usr/sbin/slurmdbd
    wait_for 30 "slurmdbd" sacctmgr -n list cluster
  fi
  if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx eve-local; then
    sacctmgr -i add cluster eve-local >/dev/null
  fi
}

start_munge() {
  local munge_dir=$base_dir/munge
  pid_alive "$munge_dir/run/munged.pid" && return 0
  id munge >/dev/null 2>&1 || { log "user 'munge' missing (munge package not installed?)"; exit 4; }
  mkdir -p "$munge_dir/etc" "$munge_dir/run" "$munge_dir/log" "$munge_dir/lib"
  if [ ! -s "$munge_dir/etc/munge.key" ]; then
    dd if=/dev/urandom of="$munge_dir/etc/munge.key" bs=1024 count=1 status=none
  fi
  chown -R munge:munge "$munge_dir"
  chmod 0700 "$munge_dir/etc" "$munge_dir/log" "$munge_dir/lib"
  chmod 0400 "$munge_dir/etc/munge.key"
  chmod 0755 "$munge_dir" "$munge_dir/run"
  runuser -u munge -- /usr/sbin/munged --socket="$munge_socket" --key-file="$munge_dir/etc/munge.key" \
    --pid-file="$munge_dir/run/munged.pid" --log-file="$munge_dir/log/munged.log" \
    --seed-file="$munge_dir/lib/munged.seed"
}

wait_for() {  # seconds, description, command...
  local deadline=$(( $(date +%s) + $1 )) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then log "timed out waiting for $what"; return 1; fi
    sleep 0.2
  done
}

nodes_idle() {
  local states
  states=$(sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
  [ "$(echo "$states" | grep -c -E ' (idle|mixed|allocated)')" -eq "$node_count" ]
}

configured_node_count() {
  [ -f "$conf" ] && grep -c '^NodeName=' "$conf" || echo 0
}

cluster_up() {
  mkdir -p "$base_dir/log"
  chmod 0755 "$base_dir"
  install_packages
  if pid_alive "$base_dir/run/slurmctld.pid" && [ "$(configured_node_count)" != "$node_count" ]; then
    log "running with $(configured_node_count) node(s); restarting with $node_count"
    cluster_down
  fi
  write_config
  start_munge
  wait_for 10 "munge socket" test -S "$munge_socket"
  start_accounting
  if ! pid_alive "$base_dir/run/slurmctld.pid"; then
    /usr/sbin/slurmctld -f "$conf"
    wait_for 20 "slurmctld" scontrol ping
  else
    wait_for 20 "slurmctld" scontrol ping
    scontrol reconfigure >/dev/null  # pick up a regenerated slurm.conf
  fi
  local i
  for i in $(seq 1 "$node_count"); do
    mkdir -p "$base_dir/spool/node$i"
    if ! pid_alive "$base_dir/run/slurmd-node$i.pid"; then
      /usr/sbin/slurmd -f "$conf" -N "node$i"
    fi
  done
  if ! wait_for 15 "nodes to become idle" nodes_idle; then
    # A node left DOWN/DRAIN by an earlier run of this cluster: it is ours, bring it back.
    scontrol update NodeName="node[1-$node_count]" State=RESUME >/dev/null 2>&1 || true
    wait_for 15 "nodes to become idle" nodes_idle || { sinfo -N >&2; exit 5; }
  fi
  echo "SLURM_CONF=$conf"
}

cluster_down() {
  if pid_alive "$base_dir/run/slurmctld.pid"; then
    # Jobs of this cluster only: SLURM_CONF points at our controller.
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    local deadline=$(( $(date +%s) + 20 ))
    while [ -n "$(squeue -h -t running,completing -o %i 2>/dev/null)" ] && [ "$(date +%s)" -lt "$deadline" ]; do
      sleep 0.5
    done
  fi
  local pid_file
  for pid_file in "$base_dir"/run/slurmd-*.pid "$base_dir/run/slurmctld.pid" "$base_dir/run/slurmdbd.pid" \
      "$base_dir/mysql/run/mysqld.pid" "$base_dir/munge/run/munged.pid"; do
    [ -f "$pid_file" ] || continue
    local pid
    pid=$(cat "$pid_file")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pid_file"
  done
  if [ "$purge" = 1 ]; then rm -rf "$base_dir"; fi
}

cluster_status() {
  local up=0
  pid_alive "$base_dir/munge/run/munged.pid" && echo "munged: running (pid $(cat "$base_dir/munge/run/munged.pid"))" || { echo "munged: stopped"; up=3; }
  pid_alive "$base_dir/run/slurmctld.pid" && echo "slurmctld: running (pid $(cat "$base_dir/run/slurmctld.pid"))" || { echo "slurmctld: stopped"; up=3; }
  if [ "$accounting" = 1 ]; then
    pid_alive "$base_dir/run/slurmdbd.pid" && echo "slurmdbd: running (pid $(cat "$base_dir/run/slurmdbd.pid"))" || { echo "slurmdbd: stopped"; up=3; }
    pid_alive "$base_dir/mysql/run/mysqld.pid" && echo "mariadb: running (pid $(cat "$base_dir/mysql/run/mysqld.pid"))" || { echo "mariadb: stopped"; up=3; }
  fi
  local pid_file
  for pid_file in "$base_dir"/run/slurmd-*.pid; do
    [ -f "$pid_file" ] || continue
    pid_alive "$pid_file" && echo "$(basename "$pid_file" .pid): running (pid $(cat "$pid_file"))" || { echo "$(basename "$pid_file" .pid): stopped"; up=3; }
  done
  if [ "$up" = 0 ]; then
    echo "SLURM_CONF=$conf"
    sinfo -N 2>/dev/null || true
  fi
  return "$up"
}

case "$command_name" in
  up) cluster_up ;;
  down) cluster_down ;;
  status) cluster_status ;;
  *) echo "usage: cluster.sh up|down|status [--nodes N] [--base-dir DIR] [--purge]" >&2; exit 2 ;;
esac
