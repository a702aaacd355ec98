#!/usr/bin/env bash
# make cross-test, for one ARM target: under qemu-user emulating a real
# board's CPU (not qemu's "max", which has every extension and would hide a
# build that uses too new instructions),
#   1. the cross-compiled test binaries of serialproto (protocol), native
#      (llama.cpp binding; greedy tokens of the tiny model vs the amd64
#      golden file) and backends (the engine; its golden file too);
#   2. the end-to-end run (cross/e2e.sh): ARM mcpd on loopback UDP,
#      amd64 mcpctl ask, answers equal the amd64 golden;
#   3. the CPU check: on a CPU lacking what the build needs, mcpd refuses
#      at start with native.ErrCPU's message instead of dying on SIGILL.
# Usage: cross/test.sh TARGET
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/targets.sh"
cd "$root"

target=$1
target_env "$target"
"$here/toolchain.sh" "$target"
dist=${CROSS_DIST:-$root/dist/cross}
out=$dist/linux-$target
if [ -z "$QEMU" ]; then
	echo "cross-test: $target is native; make test covers it" >&2
	exit 2
fi
# The board each target is tested as, and a CPU it must refuse.
case "$target" in
arm64)
	board=${CROSS_ARM64_BOARD:-cortex-a72} # Raspberry Pi 4: armv8.0-a, no dotprod
	refuse=
	case "$CFLAGS" in *dotprod*) board=cortex-a76 refuse=cortex-a72 ;; esac
	;;
armv7)
	board=${CROSS_ARMV7_BOARD:-cortex-a7} # Raspberry Pi 2: NEON + VFPv4
	refuse=
	case "$CFLAGS" in *neon-vfpv4*) refuse=cortex-a8 ;; esac # NEON, VFPv3 only
	;;
esac
qemu=("$QEMU" -L "/usr/$TRIPLET" -cpu "$board")

for pkg in serialproto native backends; do
	bin=$out/test/$pkg.test
	[ -x "$bin" ] || { echo "cross-test: $bin missing (cross/build.sh $target --tests)" >&2; exit 1; }
	echo "== linux-$target ($board) $pkg tests"
	start=$(date +%s)
	# Test binaries run in their package directory, as go test does, so
	# they read testdata/ (the golden files written by the amd64 build).
	(cd "$pkg" && "${qemu[@]}" "$bin" -test.count=1 -test.timeout=10m ${CROSS_TEST_FLAGS:-})
	echo "   $pkg: $(($(date +%s) - start)) s under qemu"
done

echo "== linux-$target ($board) end to end"
start=$(date +%s)
"$here/e2e.sh" "$target" --cpu "$board"
echo "   e2e: $(($(date +%s) - start)) s under qemu"

if [ -n "$refuse" ]; then
	echo "== linux-$target on $refuse: must refuse"
	set +e
	msg=$("$QEMU" -L "/usr/$TRIPLET" -cpu "$refuse" "$out/mcpd" --config /dev/null \
		--backend native --model testdata/models/tiny.gguf --http off --listen-udp 127.0.0.1:0 2>&1)
	rc=$?
	set -e
	echo "$msg" | tail -n 2
	if [ "$rc" = 0 ] || ! grep -q 'CPU unsupported by this build' <<<"$msg"; then
		echo "cross-test: linux-$target on $refuse: want a clear CPU refusal, got rc $rc" >&2
		exit 1
	fi
	if grep -qi 'illegal instruction\|SIGILL' <<<"$msg"; then
		echo "cross-test: linux-$target on $refuse died on an illegal instruction" >&2
		exit 1
	fi
fi
echo "== cross-test linux-$target: passed"
