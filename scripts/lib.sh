# Shared shell functions of scripts/start-demo and scripts/test (sourced, not run).
#
# Each ensure_* step is idempotent and quiet when there is nothing to do; a failing step prints the
# output of the command that failed and stops the script.

VPBX_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$VPBX_ROOT/.venv"
# Debian packages needed to run vpbx (the Python interpreter, its venv module and headers, a compiler
# for packages without wheels), and the prompt converters: sox with its MP3 reader, espeak-ng for speech
# (telephony.md §3.10). Node.js and npm are added only when npm is missing.
RUN_APT_PACKAGES=(python3 python3-venv python3-dev build-essential sox libsox-fmt-mp3 espeak-ng)

_apt_updated=0

say() { printf 'vpbx: %s\n' "$*" >&2; }
die() { printf 'vpbx: error: %s\n' "$*" >&2; exit 1; }

# Run a command with its output kept in a log; print the log only if the command fails.
quietly() {
    local log rc=0
    log="$(mktemp)"
    ("$@") >"$log" 2>&1 || rc=$?  # a subshell, so that a die inside still shows its message
    if [[ $rc -ne 0 ]]; then
        cat "$log" >&2
        rm -f "$log"
        say "failed (exit $rc): $*"
        return "$rc"
    fi
    rm -f "$log"
}

# Run as root: directly when we are root, otherwise through sudo.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root for: $* (run as root or install sudo)"
    fi
}

# Run as the postgres system user, from / so it does not complain about our working directory.
as_postgres() {
    if [[ $EUID -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && sudo -u postgres -- "$@")
    fi
}

_apt_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == "installed" ]]
}

# ensure_apt_packages PKG...: install the Debian packages that are missing; `apt-get update` once.
ensure_apt_packages() {
    if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
        say "not a Debian system: make sure these are installed: $*"
        return 0
    fi
    local missing=() p
    for p in "$@"; do
        _apt_installed "$p" || missing+=("$p")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if [[ $_apt_updated -eq 0 ]]; then
        quietly as_root apt-get update -q
        _apt_updated=1
    fi
    quietly as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# The system packages for running vpbx, plus any extra ones given (scripts/test adds its own).
ensure_system_packages() {
    local pkgs=("${RUN_APT_PACKAGES[@]}" "$@")
    if ! command -v npm >/dev/null 2>&1; then
        pkgs+=(nodejs npm)
    fi
    ensure_apt_packages "${pkgs[@]}"
}

# A Python >= 3.11 that can create virtual environments: $VPBX_PYTHON, python3 on PATH, Debian's.
find_python() {
    local py
    for py in "${VPBX_PYTHON:-}" python3 python3.11 /usr/bin/python3; do
        [[ -n "$py" ]] || continue
        command -v "$py" >/dev/null 2>&1 || continue
        if "$py" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
            command -v "$py"
            return 0
        fi
    done
    return 1
}

_venv_works() {
    [[ -x "$VENV/bin/python" ]] &&
        "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 &&
        [[ -x "$VENV/bin/pip" ]]
}

# ensure_venv [EXTRAS]: .venv with `pip install -e .[EXTRAS]`; reinstalls only when pyproject.toml
# (or the checkout's location) changed since the last successful install.
ensure_venv() {
    local extras="${1:-}" spec="." stamp want py
    if [[ -n "$extras" ]]; then
        spec=".[$extras]"
    fi
    if ! _venv_works; then
        py="$(find_python)" || die "no Python >= 3.11 with the venv module found"
        if [[ -e "$VENV" ]]; then
            say "recreating $VENV (its interpreter does not work)"
            rm -rf "$VENV"
        fi
        say "creating $VENV with $py"
        quietly "$py" -m venv "$VENV"
    fi
    want="$(cd "$VPBX_ROOT" && sha256sum pyproject.toml | cut -d' ' -f1) $VPBX_ROOT"
    stamp="$VENV/.vpbx-installed-${extras:-base}"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    # The dev install includes everything the base install has.
    if [[ -z "$extras" && -f "$VENV/.vpbx-installed-dev" && "$(cat "$VENV/.vpbx-installed-dev")" == "$want" ]]; then
        return 0
    fi
    say "installing Python packages (pip install -e '$spec')"
    (cd "$VPBX_ROOT" && quietly "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e "$spec")
    printf '%s' "$want" >"$stamp"
}

# ensure_node_modules: `npm ci` when node_modules is missing or older than package-lock.json.
ensure_node_modules() {
    local stamp="$VPBX_ROOT/node_modules/.vpbx-lock-sha256" want
    command -v npm >/dev/null 2>&1 || die "npm is missing (install Debian's nodejs and npm)"
    want="$(cd "$VPBX_ROOT" && sha256sum package-lock.json | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    say "installing cabinet assets (npm ci)"
    (cd "$VPBX_ROOT" && quietly npm ci --no-audit --no-fund --loglevel=error)
    printf '%s' "$want" >"$stamp"
}

# ensure_postgres: start the local PostgreSQL cluster (Debian's pg_ctlcluster) on loopback, create the
# role vpbx/vpbx with CREATEDB, and set PG_PORT to the cluster's port.
ensure_postgres() {
    local ver name port status line deadline
    command -v pg_lsclusters >/dev/null 2>&1 || die "pg_lsclusters not found (install Debian's postgresql)"
    line="$(pg_lsclusters --no-header 2>/dev/null | awk '$2 == "main"' | sort -V | tail -n 1)"
    if [[ -z "$line" ]]; then
        ver="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
        [[ -n "$ver" ]] || die "no PostgreSQL server found under /usr/lib/postgresql"
        say "creating PostgreSQL cluster $ver/main"
        quietly as_root pg_createcluster "$ver" main
        line="$(pg_lsclusters --no-header | awk -v v="$ver" '$1 == v && $2 == "main"')"
    fi
    read -r ver name port status _ <<<"$line"
    if [[ "$status" != online* ]]; then
        say "starting PostgreSQL $ver/$name on port $port"
        quietly as_root pg_ctlcluster "$ver" "$name" start
    fi
    deadline=$((SECONDS + 60))
    until pg_isready -q -h 127.0.0.1 -p "$port"; do
        if ((SECONDS >= deadline)); then
            die "PostgreSQL $ver/$name did not accept connections on 127.0.0.1:$port within 60 s"
        fi
        sleep 0.2
    done
    quietly as_postgres psql -p "$port" -v ON_ERROR_STOP=1 -q -c "
        DO \$\$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vpbx') THEN
                CREATE ROLE vpbx LOGIN CREATEDB PASSWORD 'vpbx';
            ELSE
                ALTER ROLE vpbx LOGIN CREATEDB PASSWORD 'vpbx';
            END IF;
        END \$\$;"
    PG_PORT="$port"
}
