#!/bin/bash
# Cargo's runner for x86_64-pc-windows-gnu test binaries: runs them under
# Wine. Wine 8 has no bcryptprimitives.dll (ProcessPrng, which Rust's std
# calls), so a shim built from bcryptprimitives.c is placed beside the
# binary and preferred over Wine's builtin.
set -euo pipefail
exe=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
shim="$(dirname "$exe")/bcryptprimitives.dll"
if [ ! -f "$shim" ] || [ "$here/bcryptprimitives.c" -nt "$shim" ]; then
    x86_64-w64-mingw32-gcc -shared -O2 -o "$shim" "$here/bcryptprimitives.c" -ladvapi32
fi
# A test of a package with a binary runs that binary too (from the parent
# of `deps/`): it needs the shim beside it as well.
if [ "$(basename "$(dirname "$exe")")" = deps ]; then
    up="$(dirname "$(dirname "$exe")")/bcryptprimitives.dll"
    [ "$up" -nt "$shim" ] || cp "$shim" "$up"
fi
wine=$(command -v wine64 || true)
[ -n "$wine" ] || wine=/usr/lib/wine/wine64
export PORTALOCKER_UNDER_WINE=1
export WINEDEBUG=${WINEDEBUG:--all}
export WINEDLLOVERRIDES="bcryptprimitives=n${WINEDLLOVERRIDES:+;$WINEDLLOVERRIDES}"
export WINEPREFIX=${WINEPREFIX:-$(cd "$here/../.." && pwd)/target/wine-prefix}
exec "$wine" "$exe" "$@"
