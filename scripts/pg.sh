# shellcheck shell=bash
# scripts/pg.sh — shared helpers for scripts/demo and scripts/test (sourced, not executed).
#
#   ensure_packages                     apt-get install what is missing from RELAY_APT_PACKAGES
#   ensure_cargo                        make sure `cargo` is on PATH (tries ~/.cargo/bin)
#   pg_bindir                           newest /usr/lib/postgresql/*/bin
#   pg_start_cluster DIR PORT [--throwaway]
#                                       initdb DIR/data if needed, start, wait until ready;
#                                       idempotent (a running cluster keeps its port)
#   pg_stop_cluster DIR                 stop it if running
#   pg_is_running DIR                   exit 0 when the cluster in DIR is up
#   pg_port_free PORT                   exit 0 when nothing listens on 127.0.0.1:PORT
#   pg_free_port                        print a free TCP port on 127.0.0.1
#   pg_url DIR                          postgres://relay:PASSWORD@127.0.0.1:PORT/relay
#   pg_admin_url DIR                    postgres://postgres@127.0.0.1:PORT/postgres
#                                       (only accepted by --throwaway clusters)
#
# Cluster layout: DIR/data (PGDATA), DIR/run (unix socket), DIR/log, DIR/port,
# DIR/password (mode 600, password of the `relay` role).
# Access: listens on 127.0.0.1 and the unix socket only.  Superuser `postgres`: trust on the
# socket (directory mode 700, so only the cluster's OS user and root can reach it);
# everything over TCP is scram-sha-256, except that --throwaway clusters (scripts/test)
# also trust `postgres` from 127.0.0.1 so the test harness can create databases.
#
# PostgreSQL refuses to run as root: when EUID is 0 the server runs as the `postgres`
# system user (runuser), otherwise as the calling user.

set -euo pipefail

# Debian packages the scripts need.  Later features append here (e.g. fonts-ipaexfont,
# poppler-utils, zbar-tools, chromium).
RELAY_APT_PACKAGES=(postgresql fontconfig fonts-noto-cjk fonts-ipaexfont poppler-utils zbar-tools
  chromium chromium-driver haproxy)

_pg_say() { printf '==> %s\n' "$*" >&2; }
_pg_die() { printf 'error: %s\n' "$*" >&2; return 1; }

_pg_pkg_installed() {
  dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed$'
}

ensure_packages() {
  local missing=() pkg
  for pkg in "${RELAY_APT_PACKAGES[@]}"; do
    _pg_pkg_installed "$pkg" || missing+=("$pkg")
  done
  ((${#missing[@]} > 0)) || return 0

  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 ||
      _pg_die "missing packages (${missing[*]}); run: apt-get install ${missing[*]}" || return 1
    sudo=(sudo)
  fi
  _pg_say "installing: ${missing[*]}"
  local log rc=0
  log="$(mktemp)"
  {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get -qq -o DPkg::Lock::Timeout=300 update &&
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get -qq -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${missing[@]}"
  } >"$log" 2>&1 </dev/null || rc=$?
  if ((rc != 0)); then
    cat "$log" >&2
    rm -f "$log"
    _pg_die "apt-get failed (exit $rc) installing: ${missing[*]}"
    return 1
  fi
  rm -f "$log"
}

ensure_cargo() {
  command -v cargo >/dev/null 2>&1 && return 0
  if [[ -x "${CARGO_HOME:-${HOME:-/root}/.cargo}/bin/cargo" ]]; then
    PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
    export PATH
    return 0
  fi
  _pg_die "cargo not found on PATH nor in ${CARGO_HOME:-${HOME:-/root}/.cargo}/bin (install rustup)"
}

pg_bindir() {
  local dir
  dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -n 1)"
  if [[ -z "$dir" ]] && command -v pg_config >/dev/null 2>&1; then
    dir="$(pg_config --bindir)"
  fi
  [[ -n "$dir" && -x "$dir/initdb" ]] ||
    _pg_die "PostgreSQL server binaries not found (is the postgresql package installed?)" || return 1
  printf '%s\n' "$dir"
}

# runuser lives in /usr/sbin, which a minimal PATH may lack.
_pg_runuser() {
  local ru
  ru="$(command -v runuser 2>/dev/null || true)"
  [[ -n "$ru" ]] || for ru in /usr/sbin/runuser /sbin/runuser ''; do [[ -x "$ru" ]] && break; done
  [[ -n "$ru" ]] || _pg_die "runuser not found (util-linux); needed to run PostgreSQL as 'postgres'" || return 1
  "$ru" "$@"
}

# Run a command as the cluster's OS user, from a directory it can surely enter.
_pg_as_owner() {
  if ((EUID == 0)); then
    (cd / && _pg_runuser -u postgres -- "$@")
  else
    (cd / && "$@")
  fi
}

_pg_abs() { (cd "$1" && pwd -P); }

_pg_port_of() {
  local dir=$1
  [[ -s "$dir/port" ]] || _pg_die "no port recorded in $dir/port (cluster never started?)" || return 1
  tr -d '[:space:]' <"$dir/port"
}

# Unix socket paths are limited to ~107 bytes; fall back to a short directory under /tmp.
_pg_socket_dir() {
  local dir=$1
  if [[ -s "$dir/socket_dir" ]]; then
    local recorded
    recorded="$(cat "$dir/socket_dir")" || return 1
    # A fallback directory under /tmp may have been cleaned up since.
    [[ -d "$recorded" ]] || (umask 077 && mkdir -p "$recorded") || return 1
    printf '%s\n' "$recorded"
    return 0
  fi
  local sock="$dir/run"
  if ((${#sock} > 80)); then
    sock="$(mktemp -d /tmp/relay-pg-sock.XXXXXX)" || return 1
  else
    mkdir -p "$sock" || return 1
  fi
  printf '%s\n' "$sock" >"$dir/socket_dir"
  printf '%s\n' "$sock"
}

pg_is_running() {
  local dir bin
  [[ -d "$1" && -f "$1/data/PG_VERSION" ]] || return 1
  dir="$(_pg_abs "$1")" || return 1
  bin="$(pg_bindir)" || return 1
  _pg_as_owner "$bin/pg_ctl" status -D "$dir/data" >/dev/null 2>&1
}

pg_port_free() {
  local port=$1
  # A successful connect means something listens there.
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    return 1
  fi
  return 0
}

pg_free_port() {
  local port i
  # Stay below Linux's ephemeral range (32768+) so outgoing connections never collide.
  for ((i = 0; i < 200; i++)); do
    port=$((20000 + (RANDOM % 12000)))
    if pg_port_free "$port"; then
      printf '%s\n' "$port"
      return 0
    fi
  done
  _pg_die "no free TCP port found on 127.0.0.1"
}

# Fail early, with a useful message, when the cluster user cannot reach DIR.
_pg_check_traversable() {
  local dir=$1
  ((EUID == 0)) || return 0
  _pg_runuser -u postgres -- true || return 1
  if ! _pg_runuser -u postgres -- test -x "$dir" 2>/dev/null; then
    # Find the topmost directory the postgres user cannot enter.
    local p='' part blocked=$dir
    local -a parts
    IFS=/ read -r -a parts <<<"${dir#/}"
    for part in "${parts[@]}"; do
      p="$p/$part"
      if ! _pg_runuser -u postgres -- test -x "$p" 2>/dev/null; then
        blocked=$p
        break
      fi
    done
    _pg_die "the postgres user cannot enter $dir (blocked at $blocked);" \
      "PostgreSQL runs as 'postgres' when you are root.  Grant traversal" \
      "(chmod o+x $blocked) or put the cluster elsewhere."
    return 1
  fi
}

_pg_write_config() {
  local dir=$1 port=$2 throwaway=$3 sock=$4 data="$1/data"
  local sock_q=${sock//\'/\'\'}
  {
    printf '# Managed by scripts/pg.sh; rewritten at every start.\n'
    printf "listen_addresses = '127.0.0.1'\n"
    printf 'port = %s\n' "$port"
    printf "unix_socket_directories = '%s'\n" "$sock_q"
    printf 'unix_socket_permissions = 0700\n'
    printf "password_encryption = 'scram-sha-256'\n"
    if ((throwaway)); then
      # Throwaway test cluster: speed over durability, room for parallel tests.
      printf 'fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n'
      printf 'max_connections = 200\n'
    fi
  } >"$data/relay.conf.tmp" || return 1
  {
    printf '# Managed by scripts/pg.sh; rewritten at every start.\n'
    printf '# TYPE  DATABASE  USER      ADDRESS         METHOD\n'
    printf 'local   all       postgres                  trust\n'
    printf 'local   all       all                       scram-sha-256\n'
    if ((throwaway)); then
      printf 'host    all       postgres  127.0.0.1/32    trust\n'
    fi
    printf 'host    all       all       127.0.0.1/32    scram-sha-256\n'
  } >"$data/pg_hba.conf.tmp" || return 1
  if ((EUID == 0)); then
    chown postgres: "$data/relay.conf.tmp" "$data/pg_hba.conf.tmp" || return 1
  fi
  chmod 600 "$data/relay.conf.tmp" "$data/pg_hba.conf.tmp" || return 1
  mv -f "$data/relay.conf.tmp" "$data/relay.conf" || return 1
  mv -f "$data/pg_hba.conf.tmp" "$data/pg_hba.conf" || return 1
}

# Ensure role `relay` (password from DIR/password) and database `relay` exist.
_pg_ensure_role_db() {
  local dir=$1 bin sock port pw
  bin="$(pg_bindir)" || return 1
  sock="$(_pg_socket_dir "$dir")" || return 1
  port="$(_pg_port_of "$dir")" || return 1
  pw="$(cat "$dir/password")" || return 1
  [[ "$pw" =~ ^[0-9a-f]+$ ]] || _pg_die "unexpected content in $dir/password" || return 1
  "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -U postgres -d postgres >/dev/null <<SQL || return 1
SELECT format('CREATE ROLE relay LOGIN PASSWORD %L', '$pw')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'relay') \gexec
ALTER ROLE relay LOGIN PASSWORD '$pw';
SELECT 'CREATE DATABASE relay OWNER relay ENCODING ''UTF8'''
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'relay') \gexec
SQL
}

pg_start_cluster() {
  local dir=${1:?usage: pg_start_cluster DIR PORT [--throwaway]}
  local port=${2:?usage: pg_start_cluster DIR PORT [--throwaway]}
  local throwaway=0
  case "${3:-}" in
    '') ;;
    --throwaway) throwaway=1 ;;
    *) _pg_die "pg_start_cluster: unknown option: $3" || return 1 ;;
  esac
  [[ "$port" =~ ^[0-9]+$ ]] || _pg_die "pg_start_cluster: bad port: $port" || return 1

  local bin sock
  bin="$(pg_bindir)" || return 1
  if ((EUID == 0)); then
    getent passwd postgres >/dev/null || _pg_die "system user 'postgres' does not exist" || return 1
  fi
  mkdir -p "$1" || return 1
  dir="$(_pg_abs "$1")" || return 1
  # DIR is ours: let the postgres user through it (its contents keep their own modes).
  if ((EUID == 0)); then chmod o+x "$dir" || return 1; fi
  _pg_check_traversable "$dir" || return 1

  if pg_is_running "$dir"; then
    local running_port
    running_port="$(_pg_port_of "$dir")" || return 1
    if [[ "$running_port" != "$port" ]]; then
      _pg_say "cluster in $dir already running on port $running_port (keeping it)"
    fi
    _pg_ensure_role_db "$dir" || return 1
    return 0
  fi

  # Password of the relay role: created once, kept private to the invoking user.
  if [[ ! -s "$dir/password" ]]; then
    (
      umask 077
      head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/password.tmp"
    ) || return 1
    mv -f "$dir/password.tmp" "$dir/password" || return 1
  fi
  chmod 600 "$dir/password" || return 1

  sock="$(_pg_socket_dir "$dir")" || return 1
  if ((EUID == 0)); then chown postgres: "$sock" || return 1; fi
  chmod 700 "$sock" || return 1

  if [[ ! -f "$dir/data/PG_VERSION" ]]; then
    _pg_say "initializing PostgreSQL cluster in $dir/data"
    mkdir -p "$dir/data" || return 1
    if ((EUID == 0)); then chown postgres: "$dir/data" || return 1; fi
    chmod 700 "$dir/data" || return 1
    local initlog="$dir/initdb.log"
    if ! _pg_as_owner "$bin/initdb" -D "$dir/data" -U postgres --encoding=UTF8 --no-locale \
      --auth-local=trust --auth-host=scram-sha-256 >"$initlog" 2>&1; then
      cat "$initlog" >&2
      _pg_die "initdb failed for $dir/data"
      return 1
    fi
    rm -f "$initlog"
    printf "\ninclude_if_exists = 'relay.conf'\n" >>"$dir/data/postgresql.conf" || return 1
  fi

  _pg_write_config "$dir" "$port" "$throwaway" "$sock" || return 1
  printf '%s\n' "$port" >"$dir/port" || return 1
  touch "$dir/log" || return 1
  if ((EUID == 0)); then chown postgres: "$dir/log" || return 1; fi

  if ! _pg_as_owner "$bin/pg_ctl" start -D "$dir/data" -l "$dir/log" -w -t 60 -s >/dev/null 2>&1; then
    tail -n 30 "$dir/log" >&2 || true
    _pg_die "PostgreSQL failed to start in $dir (port $port); log: $dir/log"
    return 1
  fi
  local i
  for ((i = 0; i < 60; i++)); do
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break
    sleep 0.5
  done
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" ||
    _pg_die "PostgreSQL in $dir is not accepting connections on port $port" || return 1

  _pg_ensure_role_db "$dir" || return 1
}

pg_stop_cluster() {
  local dir=${1:?usage: pg_stop_cluster DIR} bin
  [[ -f "$dir/data/PG_VERSION" ]] || return 0
  pg_is_running "$dir" || return 0
  dir="$(_pg_abs "$dir")" || return 1
  bin="$(pg_bindir)" || return 1
  _pg_as_owner "$bin/pg_ctl" stop -D "$dir/data" -m fast -w -t 60 -s ||
    _pg_die "could not stop PostgreSQL in $dir" || return 1
}

pg_url() {
  local dir=${1:?usage: pg_url DIR} port pw
  port="$(_pg_port_of "$dir")" || return 1
  pw="$(cat "$dir/password")" || return 1
  printf 'postgres://relay:%s@127.0.0.1:%s/relay\n' "$pw" "$port"
}

pg_admin_url() {
  local dir=${1:?usage: pg_admin_url DIR} port
  port="$(_pg_port_of "$dir")" || return 1
  printf 'postgres://postgres@127.0.0.1:%s/postgres\n' "$port"
}
