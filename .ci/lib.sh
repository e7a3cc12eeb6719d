# Shared by .ci/provision and .ci/checks (sourced, not run).

log() { printf '\n== %s\n' "$*"; }

wait_for() { # name, command...
    local name=$1; shift
    for _ in $(seq 1 60); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    echo "$name did not come up" >&2
    return 1
}

# Debian packages the checks and the fault tests need, installed when missing (as root).
apt_updated=
apt_install() { # package...
    if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
        echo "cannot install $*: not root, or no apt-get" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$apt_updated" ]; then
        apt-get update -qq >/dev/null || return 1
        apt_updated=1
    fi
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

