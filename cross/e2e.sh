#!/usr/bin/env bash
# End-to-end: the TARGET's mcpd (under qemu-user for ARM) serves MODEL on a
# free loopback UDP port; the amd64 mcpctl asks the golden prompts over it
# and the answers must equal cross/testdata/ask-tiny.golden byte for byte
# (greedy decoding, so the text depends only on the model and the
# arithmetic; the golden file comes from the amd64 build: --update).
# Prints mcpctl's statistics (tokens/s under qemu: a sanity figure only).
#
# Usage: cross/e2e.sh TARGET [--update] [--model GGUF] [--cpu QEMU_CPU] [--no-golden] [--prompts N]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/targets.sh"
cd "$root"

target=$1
shift
update=0 golden=1 model=testdata/models/tiny.gguf qcpu=${CROSS_QEMU_CPU:-} nprompts=3
while [ $# -gt 0 ]; do
	case "$1" in
	--update) update=1 ;;
	--no-golden) golden=0 ;;
	--model) model=$2; shift ;;
	--cpu) qcpu=$2; shift ;;
	--prompts) nprompts=$2 golden=0; shift ;; # a speed probe: no golden check
	*) echo "e2e: unknown flag $1" >&2; exit 2 ;;
	esac
	shift
done
target_env "$target"
dist=${CROSS_DIST:-$root/dist/cross}
mcpd=$dist/linux-$target/mcpd
mcpctl=$dist/linux-amd64/mcpctl
goldenfile=$here/testdata/ask-tiny.golden
for f in "$mcpd" "$mcpctl" "$model"; do
	[ -f "$f" ] || { echo "e2e: $f missing (make cross models)" >&2; exit 1; }
done
if [ "$update" = 1 ] && [ "$target" != amd64 ]; then
	echo "e2e: the golden file is written by the amd64 build only" >&2
	exit 2
fi

run=("$mcpd")
if [ -n "$QEMU" ]; then
	run=("$QEMU" -L "/usr/$TRIPLET" ${qcpu:+-cpu "$qcpu"} "$mcpd")
fi
work=$(mktemp -d)
pid=
cleanup() {
	if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
: >"$work/empty.toml" # not /etc/mcpd/mcpd.toml of the machine
threads=$(( $(nproc) < 2 ? 1 : 2 )) # mcpd refuses more threads than cores
"${run[@]}" --config "$work/empty.toml" --backend native --model "$model" --http off \
	--listen-udp "127.0.0.1:$port" \
	--threads "$threads" --max-concurrent 1 >"$work/mcpd.log" 2>&1 &
pid=$!
# Loading is quick natively and takes seconds under qemu; bounded at 120 s.
for _ in $(seq 1200); do
	grep -q 'mcpd ready' "$work/mcpd.log" && break
	if ! kill -0 "$pid" 2>/dev/null; then
		echo "e2e: linux-$target mcpd exited before it was ready:" >&2
		cat "$work/mcpd.log" >&2
		pid=
		exit 1
	fi
	sleep 0.1
done
grep -q 'mcpd ready' "$work/mcpd.log" || { echo "e2e: mcpd not ready after 120 s" >&2; cat "$work/mcpd.log" >&2; exit 1; }

prompts=("Hello, world" "ESP32 says: temperature is 21.5 C" "What should I water first?")
: >"$work/got"
for p in "${prompts[@]:0:$nprompts}"; do
	printf '>> %s\n' "$p" >>"$work/got"
	timeout 300 "$mcpctl" ask --udp "127.0.0.1:$port" --temperature 0 --max-tokens 32 --new-chat \
		--device-id "e2e-$target" "$p" >>"$work/got" 2>"$work/stats"
	sed "s/^/linux-$target: /" "$work/stats"
done
kill -INT "$pid"
wait "$pid" || { echo "e2e: mcpd did not stop cleanly:" >&2; cat "$work/mcpd.log" >&2; pid=; exit 1; }
pid=
if [ "$golden" = 0 ]; then
	exit 0
fi
if [ "$update" = 1 ]; then
	cp "$work/got" "$goldenfile"
	echo "e2e: wrote $goldenfile"
	exit 0
fi
if ! diff -u "$goldenfile" "$work/got"; then
	echo "e2e: linux-$target answers differ from the amd64 golden file" >&2
	exit 1
fi
echo "e2e: linux-$target mcpd answered over loopback UDP; text equals the amd64 golden"
