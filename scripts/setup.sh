#!/usr/bin/env bash
# Installs what kap needs on a Debian machine, only what is missing: Debian packages
# (PostgreSQL, redis-server, a Java 17 runtime, Maven, Python 3 with venv, bubblewrap for the
# sandbox that runs model-written code, Chromium and its driver for the explorer's browser test)
# and uv.
# Idempotent; run as root (or with everything already installed). Called by `make setup`.
set -euo pipefail

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# ---- Debian packages ----
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
java_major() { java -version 2>&1 | sed -nE 's/.*version "([0-9]+).*/\1/p' | head -1; }
if ! command -v java >/dev/null || [ "$(java_major)" -lt 17 ]; then
  missing+=(openjdk-17-jre-headless)
fi
command -v mvn >/dev/null || missing+=(maven)
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v runuser >/dev/null || missing+=(util-linux)
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)

if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; run as root or install them with apt-get"
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install them by hand"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed (is a Debian mirror reachable?)"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
  # Debian starts a system-wide Redis/PostgreSQL where an init system runs; kap runs its own.
else
  say "Debian packages present (postgresql, redis-server, java 17, maven, python3, bubblewrap, chromium)"
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "kap needs Python >= 3.11; python3 is $(python3 -V 2>&1) (Debian 12 ships 3.11)"

# ---- uv ----
UV_HOME="${KAP_UV_HOME:-$HOME/.local/share/kap-uv}"
if command -v uv >/dev/null; then
  say "uv $(uv --version | cut -d' ' -f2) found at $(command -v uv)"
elif [ -x "$UV_HOME/bin/uv" ]; then
  say "uv found at $UV_HOME/bin/uv"
else
  say "installing uv from PyPI into $UV_HOME"
  python3 -m venv "$UV_HOME" || die "python3 -m venv failed (install python3-venv)"
  "$UV_HOME/bin/pip" install -q uv || die "pip install uv failed (is PyPI reachable?)"
fi
