#!/usr/bin/env bash
# Runs every check of the crate: formatting, clippy, docs, unit,
# integration, multi-process, Python-interop and doc tests.
#
# Works on a fresh Debian machine: missing system packages (redis-server,
# python3-venv) are installed with apt-get when running as root, and a
# Python venv with portalocker==4.4.2 is created under target/. When
# something cannot be installed, it stops with a message saying what is
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found: install Rust >= 1.89 (https://rustup.rs)"
# The full-disk tests mount a 1 MiB tmpfs (and remount it read-only), and
# the permission tests run processes as `nobody`: both need root.
[[ $(id -u) == 0 ]] || die "run as root (e.g. 'sudo -E scripts/test.sh'): the full-disk tests mount a small tmpfs and the permission tests run processes as nobody"
command -v mount >/dev/null || die "mount(8) is missing: apt-get install mount"

# --- system packages --------------------------------------------------------
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v python3 >/dev/null || missing+=(python3)
if command -v python3 >/dev/null && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing+=(python3-venv)
fi
command -v mkfifo >/dev/null || missing+=(coreutils)
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      || die "apt-get could not install: ${missing[*]}"
  else
    die "missing: ${missing[*]}. Install them (e.g. 'sudo apt-get install ${missing[*]}') and rerun."
  fi
fi

# --- Python portalocker 4.4.2 for the interop tests ---------------------------
venv="$PWD/target/py-venv"
has_portalocker() {
  "$venv/bin/python" -c 'import portalocker, redis, sys; sys.exit(portalocker.__version__ != "4.4.2")' 2>/dev/null
}
if ! has_portalocker; then
  say "creating $venv with portalocker==4.4.2"
  mkdir -p target
  python3 -m venv "$venv" || die "python3 -m venv failed"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check 'portalocker==4.4.2' redis \
    || die "pip could not install portalocker==4.4.2 (is PyPI reachable?)"
  has_portalocker || die "portalocker 4.4.2 is not importable from $venv"
fi
export PORTALOCKER_PYTHON="$venv/bin/python"
export PORTALOCKER_REDIS_SERVER="${PORTALOCKER_REDIS_SERVER:-$(command -v redis-server)}"

# --- checks -----------------------------------------------------------------
for c in rustfmt clippy; do
  cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1 \
    || die "cargo ${c/rustfmt/fmt} is missing: rustup component add $c"
done
say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --all-targets --all-features -- -D warnings
say "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --quiet
say "cargo test (unit, integration, doc tests)"
cargo test --all-features
