#!/usr/bin/env bash
# Builds mcpd, mcpctl and mcpd-mkmodel (the demo-model writer the package
# ships) for one target into $CROSS_DIST/linux-TARGET/,
# reproducibly: -trimpath (no build paths), -buildvcs=false and an explicit
# version from git (no clock, no VCS dirtiness probe), -s -w (stripped),
# -buildid= (no content hash of the inputs' paths). Externally linked
# with RELRO and BIND_NOW. With --tests it also
# cross-compiles the test binaries (go test -c) that make cross-test runs
# under qemu, with the same flags so they reuse the compiled llama.cpp.
# Usage: cross/build.sh TARGET [--tests]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/targets.sh"
cd "$root"

target=$1
tests=${2:-}
target_env "$target"
"$here/toolchain.sh" "$target"
sh native/copy-headers.sh
go=${GO:-go}
dist=${CROSS_DIST:-$root/dist/cross}
out=$dist/linux-$target
version=${VERSION:-$(cross_version)}
mkdir -p "$out"

export_target_env
flags=(-trimpath -buildvcs=false)
# External linking (gcc, as mcpd's C++ needs anyway) for mcpctl too, so
# both get RELRO and immediate binding like any Debian binary.
ldflags="-s -w -buildid= -X main.version=$version -linkmode=external -extldflags=-Wl,-z,relro,-z,now"
start=$(date +%s.%N)
for cmd in mcpd mcpctl mcpd-mkmodel; do
	"$go" build "${flags[@]}" -ldflags "$ldflags" -o "$out/$cmd" "./cmd/$cmd"
done
if [ "$tests" = "--tests" ]; then
	# The protocol, engine and engine-binding tests; their testdata/ golden
	# files were written by the amd64 build.
	for pkg in serialproto native backends; do
		"$go" test -c "${flags[@]}" -o "$out/test/$pkg.test" "./$pkg"
	done
fi
end=$(date +%s.%N)
printf '%s\n' "$version" >"$out/VERSION"
printf 'cross: linux-%s (%s, CFLAGS %s %s) built in %.0f s\n' "$target" "$CC" "$CFLAGS" "$CPPFLAGS" "$(awk "BEGIN{print $end - $start}")"
ls -l "$out"/mcpd "$out"/mcpctl "$out"/mcpd-mkmodel
