#!/usr/bin/env bash
# Bring a fresh Debian 12 machine to a working DMSC lab (called by `make setup`).
#
# Idempotent and cheap to repeat: apt is called only if a package is missing,
# and `pip install -e .` runs only when setup.py, the apt list, this script,
# requirements-dev.txt (if any) or the checkout path changed, tracked by a hash
# in .venv/.dmsc-setup-stamp.  A second run with nothing changed does nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Installed with --no-install-recommends: netsniff-ng recommends ntpsec, which
# would replace systemd-timesyncd, and python3-pip recommends a compiler.
# openvswitch-switch is mininet's one recommendation, so it is listed explicitly
# (the kernel datapath is absent here; OVS works only with datapath='user').
# tshark has Lua built in (tools/dmsc.lua needs no separate lua package).
# iputils-ping: tests and Mininet's pingall need it; Debian images lack it.
# frr and haproxy are peers the lab runs itself, inside namespaces (topologies/frr.py,
# bench/bench_peers.py); step 1b keeps them from running as system services.
# clang, llvm, libbpf-dev build the kernel fast path (step 4; only UAPI headers and
# libbpf's bpf_helpers.h are needed, no kernel headers); libbpf1 (libbpf-dev's
# dependency) is what the forwarder loads it with; bpftool is for looking at it.
APT_PACKAGES=(
    mininet openvswitch-switch iproute2 iputils-ping ethtool tcpdump tshark nftables
    iperf3 nginx-light wrk netsniff-ng curl python3-venv python3-pip procps psmisc make
    frr haproxy clang llvm libbpf-dev bpftool
)
VENV=.venv
STAMP=$VENV/.dmsc-setup-stamp

die() { echo "setup: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces, apt); try: sudo make setup"
command -v apt-get >/dev/null && command -v dpkg-query >/dev/null \
    || die "needs a Debian-like system with apt-get and dpkg-query (tested on Debian 12)"

# --- 1. apt packages -------------------------------------------------------
installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${APT_PACKAGES[@]}" 2>/dev/null || true)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    grep -qxF "$pkg install ok installed" <<<"$installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # tshark's question "should non-superusers be able to capture packets?": no.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    echo "setup: apt packages installed"
else
    echo "setup: apt packages present"
fi

# --- 1b. frr and haproxy never run as system services -----------------------
# Their postinst enables (and, where policy allows, starts) a machine-wide
# instance.  With systemd running: disable --now and mask.  Without: stop only
# the instance the init script started (found by its own pid file, checked
# against the executable) through that init script, and disable its rc links.
# The lab's own instances use pid files under runs/, which these never touch.
service_pid_alive() {  # $1 pid file, $2 executable: true if the file names that live program
    local pid
    [ -r "$1" ] || return 1
    pid=$(head -n1 "$1" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$2" ]
}
for svc in frr haproxy; do
    dpkg-query -W -f='${Status}' "$svc" 2>/dev/null | grep -q 'install ok installed' || continue
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        if [ "$(systemctl is-enabled "$svc" 2>/dev/null)" != masked ]; then
            systemctl disable --now "$svc" >/dev/null 2>&1 || true
            systemctl mask "$svc" >/dev/null
            echo "setup: $svc service stopped, disabled and masked (the lab runs its own)"
        fi
        continue
    fi
    case $svc in
        frr) running=false
             for d in watchfrr zebra ospfd bfdd staticd mgmtd; do
                 service_pid_alive "/run/frr/$d.pid" "/usr/lib/frr/$d" && running=true
             done ;;
        haproxy) running=false
             service_pid_alive /run/haproxy.pid /usr/sbin/haproxy && running=true ;;
    esac
    if $running && [ -x "/etc/init.d/$svc" ]; then
        "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
        echo "setup: stopped the $svc system instance its package started (the lab runs its own)"
    fi
    if ls /etc/rc[2-5].d/S*"$svc" >/dev/null 2>&1; then
        update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
    # Masking needs no running systemd: it is a link to /dev/null, kept if systemd boots later.
    if [ -d /etc/systemd/system ] && [ "$(readlink "/etc/systemd/system/$svc.service")" != /dev/null ]; then
        rm -f "/etc/systemd/system/multi-user.target.wants/$svc.service"
        ln -sfn /dev/null "/etc/systemd/system/$svc.service"
        echo "setup: $svc service disabled and masked (the lab runs its own)"
    fi
done

# --- 2. venv (Debian's python 3.11, with system site-packages for mininet) ---
venv_ok() {
    [ -x "$VENV/bin/python" ] && [ -f "$VENV/pyvenv.cfg" ] \
        && grep -qx 'home = /usr/bin' "$VENV/pyvenv.cfg" \
        && grep -qx 'include-system-site-packages = true' "$VENV/pyvenv.cfg" \
        && "$VENV/bin/python" -c '' 2>/dev/null
}
if venv_ok; then
    echo "setup: venv present"
else
    rm -rf "$VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
    echo "setup: venv created (.venv from /usr/bin/python3, --system-site-packages)"
fi

# --- 3. python packages ------------------------------------------------------
want=$({
    pwd
    printf '%s\n' "${APT_PACKAGES[@]}"
    cat setup.py scripts/setup.sh
    [ ! -f requirements-dev.txt ] || cat requirements-dev.txt
} | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    echo "setup: venv up to date"
else
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e .
    [ ! -f requirements-dev.txt ] || "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-dev.txt
    "$VENV/bin/python" -c 'import scapy, yaml, pyroute2, cryptography, hypothesis, pytest, pytest_timeout, mininet.net' \
        || die "venv is missing a package after pip install"
    echo "$want" >"$STAMP"
    echo "setup: venv packages installed (pip install -e .)"
fi

# --- 4. the kernel fast path's eBPF object -------------------------------------
# Rebuilt only when forwarder/dataplane/fastpath/fastpath.bpf.c or .h is newer.
"$VENV/bin/python" -m forwarder.dataplane.fastpath.build \
    || die "cannot build the eBPF fast path (forwarder/dataplane/fastpath/fastpath.bpf.c)"
