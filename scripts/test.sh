#!/usr/bin/env bash
# Runs every check of the crate: formatting, clippy (for Linux and for
# macOS, FreeBSD and Windows), docs, unit, integration, multi-process,
# Python-interop and doc tests; the file-primitive tests again with the
# portable (macOS/BSD) platform code; and Windows tests under Wine.
#
# Works on a fresh Debian machine: missing system packages (redis-server,
# python3-venv) are installed with apt-get when running as root, and a
# Python venv with portalocker==4.4.2 is created under target/. When
# something cannot be installed, it stops with a message saying what is
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each section is stamped with the seconds since the script began, so a
# slow section shows in CI's log (the budget is ~30 minutes on 2 cores).
say() { printf '==> [%4ds] %s\n' "$SECONDS" "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found: install Rust >= 1.89 (https://rustup.rs)"
# The full-disk tests mount a 1 MiB tmpfs (and remount it read-only), and
# the permission tests run processes as `nobody`: both need root.
[[ $(id -u) == 0 ]] || die "run as root (e.g. 'sudo -E scripts/test.sh'): the full-disk tests mount a small tmpfs and the permission tests run processes as nobody"
command -v mount >/dev/null || die "mount(8) is missing: apt-get install mount"

# --- system packages --------------------------------------------------------
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
# The Redis Cluster tests join their nodes with `redis-cli --cluster create`.
command -v redis-cli >/dev/null || missing+=(redis-tools)
# The etcd lock's tests start a 3-member cluster; etcd-client generates its
# gRPC code with protoc at build time.
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v python3 >/dev/null || missing+=(python3)
if command -v python3 >/dev/null && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing+=(python3-venv)
fi
command -v mkfifo >/dev/null || missing+=(coreutils)
# The lease lock's two "hosts": two FUSE mounts of one directory (bindfs,
# fusermount); its clock-step test steps wall clocks with libfaketime.
command -v bindfs >/dev/null || missing+=(bindfs)
command -v fusermount >/dev/null || command -v fusermount3 >/dev/null || missing+=(fuse3)
[[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]] || missing+=(faketime)
# The TLS tests make a throwaway CA and certificates with openssl.
command -v openssl >/dev/null || missing+=(openssl)
# Windows: the mingw linker builds x86_64-pc-windows-gnu test binaries
# (and the shim DLL Wine 8 lacks), Wine runs them.
command -v x86_64-w64-mingw32-gcc >/dev/null || missing+=(gcc-mingw-w64-x86-64)
[[ -x /usr/lib/wine/wine64 ]] || command -v wine64 >/dev/null || missing+=(wine64)
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

# --- Rust targets for the other platforms ------------------------------------
targets=(x86_64-apple-darwin aarch64-apple-darwin x86_64-unknown-freebsd x86_64-pc-windows-msvc x86_64-pc-windows-gnu)
installed=$(rustup target list --installed 2>/dev/null || true)
need=()
for t in "${targets[@]}"; do grep -qx "$t" <<<"$installed" || need+=("$t"); done
if ((${#need[@]})); then
  command -v rustup >/dev/null || die "rustup is needed to add the targets ${need[*]}"
  say "rustup target add ${need[*]}"
  rustup target add "${need[@]}" >/dev/null || die "rustup could not add: ${need[*]}"
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
# Root-only tests (tmpfs mounts, processes as nobody) skip themselves under
# a plain `cargo test` by an unprivileged user; here a skip is a failure.
export PORTALOCKER_ROOT_TESTS=required
export PORTALOCKER_REDIS_SERVER="${PORTALOCKER_REDIS_SERVER:-$(command -v redis-server)}"
export PORTALOCKER_ETCD="${PORTALOCKER_ETCD:-$(command -v etcd)}"

# --- checks -----------------------------------------------------------------
for c in rustfmt clippy; do
  cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1 \
    || die "cargo ${c/rustfmt/fmt} is missing: rustup component add $c"
done
say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --all-targets --all-features -- -D warnings
say "cargo clippy -p portalocker-cli (the command, cli/)"
cargo clippy -p portalocker-cli --all-targets -- -D warnings
# Without the default `etcd` feature too (a build without protoc).
cargo clippy -p portalocker-cli --all-targets --no-default-features -- -D warnings
cargo clippy -p portalocker-cli --target x86_64-pc-windows-gnu -- -D warnings
# macOS: the command's tie to this program's life is the watcher there.
cargo clippy -p portalocker-cli --no-default-features --target x86_64-apple-darwin -- -D warnings
say "cargo clippy --cfg portalocker_portable (the macOS/BSD code, on Linux)"
# The features of the portable test run below (etcd's code has no portable
# branch, and building tonic again under these RUSTFLAGS costs a minute).
RUSTFLAGS="--cfg portalocker_portable" cargo clippy --all-targets \
  --features redis,redis-tls,tracing --target-dir target/portable -- -D warnings
# Windows (gnu) builds everything with the mingw toolchain. For the other
# targets this machine has no C cross-compiler, which criterion (a
# dev-dependency, through alloca) needs: the library is linted there.
# The Redis tests and benches need a redis-server from this host: on
# Windows the library is linted with the redis feature, the tests without.
say "cargo clippy --target x86_64-pc-windows-gnu"
cargo clippy --all-targets --target x86_64-pc-windows-gnu -- -D warnings
cargo clippy --lib --all-features --target x86_64-pc-windows-gnu -- -D warnings
# Every feature but `redis-tls`, whose crypto provider (ring) is C and
# assembly that needs the target's C compiler too.
for t in x86_64-apple-darwin aarch64-apple-darwin x86_64-unknown-freebsd x86_64-pc-windows-msvc; do
  say "cargo clippy --lib --target $t"
  cargo clippy --lib --features redis,tracing --target "$t" -- -D warnings
done
# The etcd lock on macOS too (once: tonic is the same on every Unix).
say "cargo clippy --lib --features etcd --target x86_64-apple-darwin"
cargo clippy --lib --features etcd --target x86_64-apple-darwin -- -D warnings
say "cargo package --list, cargo publish --dry-run"
list=$(cargo package --list --allow-dirty)
for f in Cargo.toml README.md CHANGELOG.md LICENSE-MIT LICENSE-APACHE src/lib.rs tests/support/mod.rs; do
  grep -qx "$f" <<<"$list" || die "the package lacks $f"
done
if grep -qE '^(scripts|\.ci|target)/' <<<"$list"; then
  die "the package includes repository-only files: $(grep -E '^(scripts|\.ci|target)/' <<<"$list" | head -3)"
fi
cargo publish --dry-run --allow-dirty --quiet
# The public API against the previous commit (SEMVER_BASELINE_REV to
# choose another; there is no published release to compare with yet).
# Optional: installing it takes minutes (cargo install cargo-semver-checks
# --locked).
if command -v cargo-semver-checks >/dev/null; then
  say "cargo semver-checks (against ${SEMVER_BASELINE_REV:-HEAD~1})"
  cargo semver-checks -p portalocker --all-features --baseline-rev "${SEMVER_BASELINE_REV:-HEAD~1}"
else
  say "cargo semver-checks: not installed, skipped (cargo install cargo-semver-checks --locked)"
fi
say "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --quiet
say "cargo test (unit, integration, doc tests)"
cargo test --all-features
say "cargo test --features redis --test redis (a build without TLS refuses rediss:// before connecting)"
cargo test --features redis --test redis -- bad_input
say "cargo test -p portalocker-cli (the real binary: CLIs, Python, Redis)"
cargo test -p portalocker-cli
say "cargo test --cfg portalocker_portable (named temporaries, hard-link publish, polling waiters)"
RUSTFLAGS="--cfg portalocker_portable" cargo test --features redis,redis-tls,tracing \
  --target-dir target/portable \
  --lib --test lock --test rlock --test semaphore --test temporary_lock --test pidfile \
  --test atomic_write --test small_mounts --test multiprocess --test durations \
  --test hostile --test cancel_safety
# The CLI's tie of a command to its life without the parent-death signal
# (the watcher alone, as on macOS).
RUSTFLAGS="--cfg portalocker_portable" cargo test -p portalocker-cli --no-default-features \
  --target-dir target/portable --test cli -- wrapper
# Under Wine: every suite that does not need a Unix-only facility (those
# say so at their top, or on the test).
say "cargo test --target x86_64-pc-windows-gnu (under Wine)"
CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$PWD/scripts/wine/run.sh" \
  cargo test --target x86_64-pc-windows-gnu --lib --tests
say "cargo test -p portalocker-cli --target x86_64-pc-windows-gnu (under Wine: the job-object tie)"
CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$PWD/scripts/wine/run.sh" \
  cargo test -p portalocker-cli --no-default-features --target x86_64-pc-windows-gnu --test windows
