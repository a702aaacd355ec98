#!/bin/bash
# The PID-1 checks (make test-systemd, systemd/pid1/run.sh): run inside a
# systemd-nspawn container booted with Debian 12's systemd as PID 1, as
# root, by the oneshot unit mcpd-pid1.service. /mcpd-test holds the
# package, a newer version of it, the fault build of mcpd and the probe;
# results go to /mcpd-out/results, one line per check:
#   PASS name: what was seen
#   FAIL name: what was seen instead
#   SKIP name: why it cannot be checked here (a container's limit)
# and END once every check ran. Each check is a function: its output is
# kept, its exit status decides; the last line it prints is the detail.
# No pipefail: `systemctl status | grep -q` would fail whenever grep stops
# reading before systemctl is done writing (SIGPIPE).
set -u
T=/mcpd-test
OUT=/mcpd-out
. "$T/env" # VERSION UPGRADE_VERSION
UDP=127.0.0.1:7700
CONF=/etc/mcpd/mcpd.toml
MODEL=/var/lib/mcpd/models/model.gguf
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "$*" | tee -a "$OUT/results"; }

# check NAME FUNCTION: runs FUNCTION and records its verdict.
check() {
	local name=$1 fn=$2 log rc
	log=$(mktemp)
	"$fn" >"$log" 2>&1
	rc=$?
	local detail
	detail=$(grep -v '^$' "$log" | tail -1)
	if [ "$rc" -eq 0 ]; then
		say "PASS $name: $detail"
	else
		say "FAIL $name: $detail"
		sed 's/^/    | /' "$log" | tail -25 | tee -a "$OUT/results"
	fi
	rm -f "$log"
}

die() {
	echo "$*"
	return 1
}
prop() { systemctl show -p "$2" --value "$1"; }
cursor() { journalctl -n 0 --show-cursor -q 2>/dev/null | sed -n 's/^-- cursor: //p'; }
since() { journalctl -u mcpd --after-cursor "$1" -o cat --no-pager; }
# wait_for SECONDS COMMAND...: until COMMAND succeeds.
wait_for() {
	local t=$1
	shift
	local end=$((SECONDS + t))
	until "$@" >/dev/null 2>&1; do
		[ "$SECONDS" -lt "$end" ] || return 1
		sleep 0.2
	done
}
status_has() { prop mcpd.service StatusText | grep -qF "$1"; }
journal_has() { since "$1" | grep -qF "$2"; }
ask() { mcpctl ask --udp "$UDP" --connect-timeout 30s --timeout 60s --temperature 0 --max-tokens "${2:-8}" "$1"; }
# http PATH: GET on mcpd's local endpoint without curl (minbase has none).
http() {
	exec 3<>/dev/tcp/127.0.0.1/7701 || return 1
	printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$1" >&3
	cat <&3
	exec 3<&-
}
# set_limit KEY VALUE: in the config's [limits] table.
set_limit() { sed -i "s|^#\? *$1 = .*|$1 = $2|" "$CONF"; }
reload_and_wait() {
	local c
	c=$(cursor)
	systemctl reload mcpd || return 1
	wait_for 20 journal_has "$c" "configuration reloaded"
}

# --- install -----------------------------------------------------------

t_install() {
	[ ! -e /bin/kill ] && [ ! -e /usr/bin/kill ] || die "this rootfs has a kill binary: it would hide an ExecReload that needs procps"
	DEBIAN_FRONTEND=noninteractive dpkg -i "$T/mcpd.deb" </dev/null || die "dpkg -i failed"
	[ "$(dpkg-query -W -f '${Status} ${Version}' mcpd)" = "install ok installed $VERSION" ] || die "dpkg-query: $(dpkg-query -W mcpd)"
	echo "dpkg -i mcpd $VERSION on minbase (no /bin/kill), Depends: $(dpkg-query -W -f '${Depends}' mcpd)"
}

t_postinst() {
	local pw uid
	pw=$(getent passwd mcpd) || die "no mcpd user"
	uid=$(echo "$pw" | cut -d: -f3)
	[ "$uid" -lt 1000 ] || die "mcpd uid $uid is not a system uid"
	echo "$pw" | grep -q ':/var/lib/mcpd:/usr/sbin/nologin$' || die "passwd entry: $pw"
	id -nG mcpd | grep -qw dialout || die "mcpd not in dialout: $(id -nG mcpd)"
	[ "$(stat -c '%U:%G %a' /var/lib/mcpd/models)" = "mcpd:mcpd 750" ] || die "models dir: $(stat -c '%U:%G %a' /var/lib/mcpd/models)"
	[ "$(stat -c '%U:%G %a' "$CONF")" = "root:mcpd 640" ] || die "config: $(stat -c '%U:%G %a' "$CONF")"
	[ "$(prop mcpd.service LoadState)" = loaded ] || die "mcpd.service not loaded"
	[ "$(systemctl is-enabled mcpd.service)" = disabled ] || die "mcpd.service is $(systemctl is-enabled mcpd.service) right after install"
	echo "user mcpd (uid $uid, groups $(id -nG mcpd)), /var/lib/mcpd/models mcpd:mcpd 750, $CONF root:mcpd 640, units loaded and not enabled"
}

t_security() {
	local line score
	line=$(systemd-analyze security --no-pager mcpd.service 2>&1 | grep 'Overall exposure level') || die "systemd-analyze security: no score"
	score=$(echo "$line" | sed 's/.*: \([0-9.]*\).*/\1/')
	awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || die "$line (over 2.0)"
	echo "$line (systemd-analyze security, online, against PID 1)"
}

# --- first install: no model ---------------------------------------------

t_first_start() {
	systemctl enable --now mcpd.service || die "systemctl enable --now failed"
	[ "$(systemctl is-active mcpd.service)" = active ] || die "mcpd.service is $(systemctl is-active mcpd.service)"
	[ "$(systemctl is-active mcpd.socket)" = active ] || die "mcpd.socket is $(systemctl is-active mcpd.socket)"
	status_has "waiting for a model at $MODEL (no such file or directory)" || die "StatusText: $(prop mcpd.service StatusText)"
	systemctl status --no-pager mcpd | grep -F "Status: \"waiting for a model at $MODEL" || die "systemctl status: $(systemctl status --no-pager mcpd)"
	FIRST_PID=$(prop mcpd.service MainPID)
	echo "enable --now: active with no model; $(systemctl status --no-pager mcpd | grep -o 'Status: .*')"
}

t_first_error() {
	local err rc=0
	err=$(ask "hello" 2>&1 >/dev/null) || rc=$?
	[ "$rc" -eq 9 ] || die "mcpctl ask exited $rc, want 9 (MODEL_NOT_FOUND): $err"
	echo "$err" | grep -qF "no model yet: install $MODEL" || die "the ERROR does not say what to do: $err"
	http /status | grep -qF "waiting for a model at $MODEL" || die "/status: $(http /status)"
	http /readyz | head -1 | grep -q ' 503 ' || die "/readyz: $(http /readyz | head -1)"
	echo "INFER → exit 9: $(echo "$err" | grep -o 'MODEL_NOT_FOUND.*' | head -1); /status says waiting; /readyz 503"
}

t_first_no_restart() {
	sleep 5
	[ "$(prop mcpd.service NRestarts)" = 0 ] || die "NRestarts $(prop mcpd.service NRestarts)"
	[ "$(prop mcpd.service MainPID)" = "$FIRST_PID" ] || die "MainPID changed: $FIRST_PID → $(prop mcpd.service MainPID)"
	reload_and_wait || die "systemctl reload while waiting: no 'configuration reloaded'"
	status_has "waiting for a model at" || die "after reload: $(prop mcpd.service StatusText)"
	[ "$(prop mcpd.service MainPID)" = "$FIRST_PID" ] || die "MainPID changed on reload"
	echo "5 s later: NRestarts 0, same PID $FIRST_PID; systemctl reload (sh's kill) while waiting: still waiting"
}

t_first_model() {
	local t0=$SECONDS text
	mcpd-mkmodel -shape tiny -o "$MODEL" || die "mcpd-mkmodel failed"
	wait_for 30 status_has "serving: backend llama.cpp, model model.gguf" || die "not serving 30 s after the model appeared: $(prop mcpd.service StatusText)"
	local took=$((SECONDS - t0))
	text=$(ask "Which bed needs water?") || die "ask with the model: exit $?"
	[ -n "$text" ] || die "empty answer"
	[ "$(prop mcpd.service MainPID)" = "$FIRST_PID" ] && [ "$(prop mcpd.service NRestarts)" = 0 ] || die "restarted to pick up the model"
	echo "mcpd-mkmodel -o $MODEL → serving within ${took}s, same PID, answer ${#text} bytes"
}

# --- the service, with a model ---------------------------------------------

t_start_status() {
	local c t0
	c=$(cursor)
	t0=$SECONDS
	systemctl restart mcpd || die "restart failed"
	[ "$(systemctl is-active mcpd)" = active ] || die "not active after restart"
	systemctl status --no-pager mcpd | grep -q 'Active: active (running)' || die "$(systemctl status --no-pager mcpd)"
	systemctl status --no-pager mcpd | grep -F 'Status: "serving: backend llama.cpp, model model.gguf; 1 links' || die "$(systemctl status --no-pager mcpd)"
	journal_has "$c" "llama.cpp engine ready" || die "no engine-ready log"
	echo "restart in $((SECONDS - t0)) s; $(systemctl status --no-pager mcpd | grep -o 'Status: .*')"
}

t_journal_fields() {
	local e
	e=$(journalctl -u mcpd -o json --no-pager BACKEND=llama.cpp SYSLOG_IDENTIFIER=mcpd | tail -1)
	[ -n "$e" ] || die "no entry with BACKEND=llama.cpp (the attribute is not a journal field)"
	for f in '"PRIORITY":"6"' "\"VERSION\":\"$VERSION\"" '"LINKS":"1"' '"CODE_FUNC":' '"CODE_FILE":'; do
		echo "$e" | grep -qF "$f" || die "mcpd ready entry lacks $f: $e"
	done
	journalctl -u mcpd -o json --no-pager PATH="$MODEL" | grep -q '"MESSAGE"' || die "no entry with PATH=$MODEL"
	echo "journalctl -o json: mcpd ready has BACKEND, VERSION=$VERSION, LINKS, PRIORITY=6, CODE_FILE/FUNC; PATH= matches"
}

t_socket_activation() {
	local c text
	systemctl stop mcpd.service || die "stop failed"
	[ "$(systemctl is-active mcpd.service)" = inactive ] || die "mcpd.service $(systemctl is-active mcpd.service) after stop"
	[ "$(systemctl is-active mcpd.socket)" = active ] || die "mcpd.socket $(systemctl is-active mcpd.socket)"
	prop mcpd.socket Listen | grep -q '127.0.0.1:7700 (Datagram)' || die "mcpd.socket listens on $(prop mcpd.socket Listen)"
	c=$(cursor)
	text=$(ask "Who woke me?") || die "ask through the socket: exit $?"
	[ -n "$text" ] || die "empty answer"
	[ "$(systemctl is-active mcpd.service)" = active ] || die "mcpd.service not started by the datagram"
	journal_has "$c" "socket activation: serving the UDP sockets systemd passed" || die "mcpd did not take the passed socket: $(since "$c" | tail -5)"
	echo "service stopped, socket listening; a device's datagram started mcpd, which answered on the passed socket"
}

t_reload_limit() {
	local pid
	pid=$(prop mcpd.service MainPID)
	"$T/probe" hold --udp "$UDP" -- "$0" reload-limit || die "probe hold failed"
	[ "$(prop mcpd.service MainPID)" = "$pid" ] || die "MainPID changed across the reload"
	set_limit max_sessions 256
	reload_and_wait || die "reload back failed"
	echo "systemctl reload: max_sessions 256 → 1 in force, the open session kept (same PID $pid)"
}

t_reload_rejected() {
	local c
	c=$(cursor)
	cp "$CONF" /root/mcpd.toml.good
	echo 'modle = "typo"' >>"$CONF"
	systemctl reload mcpd || die "reload failed"
	wait_for 20 journal_has "$c" "reload rejected; the running configuration stays in force" || die "no rejection logged"
	local e
	e=$(journalctl -u mcpd -o json --no-pager --after-cursor "$c" PRIORITY=3 | grep 'reload rejected' | tail -1)
	echo "$e" | grep -q '"ERR":"config /etc/mcpd/mcpd.toml: unknown keys: modle"' || die "error entry: $e"
	wait_for 10 status_has "last error:" || die "StatusText: $(prop mcpd.service StatusText)"
	cp /root/mcpd.toml.good "$CONF"
	[ "$(systemctl is-active mcpd)" = active ] || die "not active"
	reload_and_wait || die "reload of the good config failed"
	echo "a bad config: reload rejected, PRIORITY=3 entry with ERR=…unknown keys: modle, STATUS shows last error, still active"
}

# --- hardening: the sandbox probe ------------------------------------------

# container_limit DIRECTIVE: why the container keeps DIRECTIVE from taking
# effect, from what this container shows; fails when there is no such
# reason (then a directive found open is a failure).
container_limit() {
	local opts
	case "$1" in
	DevicePolicy)
		# cgroup v1: the unit's device list lives in the devices hierarchy.
		opts=$(awk '$5 == "/sys/fs/cgroup/devices" { print $6 }' /proc/self/mountinfo)
		case ",$opts," in
		*,ro,*) echo "systemd-nspawn mounts the devices cgroup hierarchy read-only (cgroup v1 host), so PID 1 cannot give the unit a device list; DeviceAllow= is not enforced either" ;;
		*) return 1 ;;
		esac
		;;
	*) return 1 ;;
	esac
}

# refused_anyway DIRECTIVE: why the probe is refused outside the unit too.
refused_anyway() {
	case "$1" in
	ProtectKernelTunables) echo "systemd-nspawn mounts /proc/sys, /proc/irq and /sys read-only in every container" ;;
	ProtectClock) echo "systemd-nspawn's seccomp filter refuses clock_adjtime() to the whole container (no CAP_SYS_TIME)" ;;
	ProtectControlGroups) echo "systemd-nspawn mounts the container's cgroup hierarchies read-only" ;;
	RestrictRealtime) echo "an unprivileged process with RLIMIT_RTPRIO 0 may not use SCHED_FIFO, and the container cannot raise that limit (systemd-nspawn drops CAP_SYS_RESOURCE)" ;;
	*) echo "no known cause" ;;
	esac
}

t_sandbox() {
	local uts mnt dropin=/run/systemd/system/mcpd.service.d c inside baseline
	uts=$(readlink /proc/1/ns/uts)
	mnt=$(readlink /proc/1/ns/mnt)
	touch /tmp/pid1-probe-marker
	mkdir -p /usr/lib/modules && touch /usr/lib/modules/pid1-probe
	rm -f /dev/pid1-probe-tty0 && mknod -m 0666 /dev/pid1-probe-tty0 c 4 0
	local args="--marker /tmp/pid1-probe-marker --uts $uts --mnt $mnt"
	mkdir -p "$dropin"
	printf '[Service]\nExecStartPre=%s sandbox %s --scratch /var/lib/mcpd\n' "$T/probe" "$args" >"$dropin/probe.conf"
	systemctl daemon-reload
	c=$(cursor)
	systemctl restart mcpd || die "restart with the probe failed"
	inside=$(since "$c" | grep '^CHECK ')
	rm -f "$dropin/probe.conf"
	systemctl daemon-reload
	mkdir -p /tmp/pid1-scratch && chown mcpd: /tmp/pid1-scratch
	# shellcheck disable=SC2086
	baseline=$(setpriv --reuid=mcpd --regid=mcpd --clear-groups "$T/probe" sandbox $args --scratch /tmp/pid1-scratch 2>&1) ||
		die "the probe outside the unit failed: $baseline"
	[ -n "$inside" ] || die "no CHECK lines from the probe in the unit"
	[ "$(echo "$inside" | wc -l)" = "$(echo "$baseline" | grep -c '^CHECK ')" ] || die "the two runs report different checks"
	SANDBOX_INSIDE=$inside
	SANDBOX_BASELINE=$baseline
	echo "the probe ran as mcpd.service's ExecStartPre and as user mcpd outside the unit"
}

# One result per directive: held inside and open outside = enforced.
sandbox_results() {
	local name state seen base reason
	while read -r _ name state seen; do
		base=$(echo "$SANDBOX_BASELINE" | awk -v n="$name" '$2 == n { print $3 }')
		case "$state/$base" in
		held/open) say "PASS hardening $name: enforced ($seen; outside the unit: open)" ;;
		held/held) say "SKIP hardening $name: cannot tell in this container: refused outside the unit too: $(refused_anyway "$name") ($seen)" ;;
		open/*)
			if reason=$(container_limit "$name"); then
				say "SKIP hardening $name: cannot enforce in container: $reason ($seen)"
			else
				say "FAIL hardening $name: not in force: $seen"
			fi
			;;
		*) say "FAIL hardening $name: no result outside the unit to compare ($state/$base)" ;;
		esac
	done <<<"$SANDBOX_INSIDE"
	say "NOTE hardening SystemCallArchitectures=native: not probed (it needs a 32-bit binary); DeviceAllow=char-ttyUSB/ACM: needs a USB serial adapter"
}

# --- the fault build: readiness, drain, watchdog ---------------------------

fault_on() {
	local dropin=/run/systemd/system/mcpd.service.d
	mkdir -p "$dropin"
	cat >"$dropin/fault.conf" <<EOF
[Service]
ExecStart=
ExecStart=$T/mcpd-fault --config $CONF
Environment=MCPD_FAULT_LOAD_DELAY=3s
WatchdogSec=3s
EOF
	cp "$CONF" /root/mcpd.toml.good
	set_limit engine_stall '"1s"'
	set_limit shutdown_drain '"3s"'
	systemctl daemon-reload
}

fault_off() {
	rm -f /run/systemd/system/mcpd.service.d/fault.conf
	cp /root/mcpd.toml.good "$CONF"
	systemctl daemon-reload
	systemctl restart mcpd
}

t_readiness() {
	local c t0 seen_loading=0 state text
	c=$(cursor)
	t0=$SECONDS
	systemctl restart --no-block mcpd
	while state=$(prop mcpd.service ActiveState) && [ "$state" != active ]; do
		[ $((SECONDS - t0)) -lt 60 ] || die "not active 60 s after restart: $state"
		if [ "$state" = activating ] && status_has "loading model $MODEL"; then
			seen_loading=1
		fi
		sleep 0.1
	done
	local took=$((SECONDS - t0))
	[ "$seen_loading" = 1 ] || die "never saw activating + 'loading model' while the engine loaded"
	journal_has "$c" "test build: delaying the engine load" || die "not the fault build"
	[ "$took" -ge 3 ] || die "active after ${took}s, before the 3 s engine load ended"
	# In the journal, the engine is loaded before systemd calls it started.
	local log ready started
	log=$(since "$c")
	ready=$(echo "$log" | grep -n 'llama.cpp engine ready' | head -1 | cut -d: -f1)
	started=$(echo "$log" | grep -n '^Started mcpd.service' | head -1 | cut -d: -f1)
	[ -n "$ready" ] && [ -n "$started" ] && [ "$ready" -lt "$started" ] || die "journal order: engine ready at line ${ready:-none}, Started at line ${started:-none}"
	text=$(ask "Ready?") || die "ask after start: exit $?"
	echo "activating with 'loading model' for ${took}s (load delayed 3s), engine ready logged before 'Started mcpd.service'"
}

t_drain() {
	local c quick long qrc=0 lrc=0 stop_took
	c=$(cursor)
	# 10 tokens at 100 ms: done within the 3 s drain; 100: cut by it.
	(ask "MCPD-FAULT-SLOW quick" 10 >/tmp/quick.out 2>&1) &
	quick=$!
	(ask "MCPD-FAULT-SLOW long" 100 >/tmp/long.out 2>&1) &
	long=$!
	sleep 0.5
	local t0=$SECONDS
	systemctl stop mcpd || die "stop failed"
	stop_took=$((SECONDS - t0))
	wait "$quick" || qrc=$?
	wait "$long" || lrc=$?
	[ "$qrc" = 0 ] || die "the quick in-flight answer: exit $qrc: $(cat /tmp/quick.out)"
	[ "$lrc" = 14 ] || die "the long one: exit $lrc, want 14 (SHUTTING_DOWN): $(cat /tmp/long.out)"
	journal_has "$c" "stopping: refusing new requests, draining" || die "no drain log"
	journal_has "$c" "drained" || die "no drained log"
	systemctl start mcpd || die "start after stop failed"
	echo "systemctl stop took ${stop_took}s: the in-flight answer finished (exit 0), one past shutdown_drain=3s got SHUTTING_DOWN (exit 14)"
}

t_watchdog() {
	local c pid n0 hang
	pid=$(prop mcpd.service MainPID)
	n0=$(prop mcpd.service NRestarts)
	c=$(cursor)
	(ask "MCPD-FAULT-HANG" 8 >/dev/null 2>&1) &
	hang=$!
	wait_for 60 bash -c "[ \"\$(systemctl show -p NRestarts --value mcpd)\" -gt $n0 ] && [ \"\$(systemctl is-active mcpd)\" = active ]" ||
		die "no restart within 60 s of a hung engine call: $(since "$c" | grep -v '^goroutine\|^\s' | tail -5)"
	kill "$hang" 2>/dev/null
	wait "$hang" 2>/dev/null
	journal_has "$c" "watchdog: not pinging" || die "mcpd did not log why it stopped pinging"
	since "$c" | grep -q 'Watchdog timeout (limit 3s)' || die "systemd did not log the watchdog timeout"
	[ "$(prop mcpd.service MainPID)" != "$pid" ] || die "same MainPID"
	ask "Back?" >/dev/null || die "the restarted mcpd does not answer"
	echo "hung engine call → mcpd stopped pinging → systemd: Watchdog timeout (limit 3s), SIGABRT, restart (NRestarts $n0 → $(prop mcpd.service NRestarts)); the new mcpd answers"
}

# --- upgrade and removal -----------------------------------------------------

t_upgrade() {
	local pid since_ts
	echo "# changed by the admin (pid1 upgrade check)" >>"$CONF"
	set_limit max_queue 7
	pid=$(prop mcpd.service MainPID)
	DEBIAN_FRONTEND=noninteractive dpkg -i "$T/mcpd-upgrade.deb" </dev/null || die "dpkg -i of the newer version failed"
	[ "$(dpkg-query -W -f '${Version}' mcpd)" = "$UPGRADE_VERSION" ] || die "version $(dpkg-query -W -f '${Version}' mcpd)"
	grep -q '^# changed by the admin' "$CONF" && grep -q '^max_queue = 7' "$CONF" || die "the admin's changes are gone"
	! ls /etc/mcpd/mcpd.toml.dpkg-* 2>/dev/null || die "dpkg left $(ls /etc/mcpd/mcpd.toml.dpkg-*)"
	[ "$(stat -c '%U:%G %a' "$CONF")" = "root:mcpd 640" ] || die "config now $(stat -c '%U:%G %a' "$CONF")"
	wait_for 30 bash -c '[ "$(systemctl is-active mcpd)" = active ]' || die "not active after the upgrade"
	[ "$(prop mcpd.service MainPID)" != "$pid" ] || die "not restarted (same PID $pid)"
	ask "Upgraded?" >/dev/null || die "no answer after the upgrade"
	echo "dpkg -i $UPGRADE_VERSION: changed conffile kept (no prompt, no .dpkg-dist), mode kept, mcpd restarted (PID $pid → $(prop mcpd.service MainPID)) and answers"
}

t_remove() {
	dpkg -r mcpd </dev/null || die "dpkg -r failed"
	[ "$(systemctl is-active mcpd.service)" != active ] || die "mcpd.service still active after removal"
	[ "$(systemctl is-active mcpd.socket)" != active ] || die "mcpd.socket still active after removal"
	[ -f "$CONF" ] || die "remove took the conffile"
	dpkg -P mcpd </dev/null || die "dpkg -P failed"
	[ ! -e "$CONF" ] || die "purge left $CONF"
	echo "dpkg -r stopped mcpd.service and mcpd.socket and kept the config; purge removed it"
}

if [ "${1:-}" = reload-limit ]; then # called by probe hold
	set_limit max_sessions 1
	reload_and_wait
	exit
fi

: >"$OUT/results"
say "NOTE systemd $(systemctl --version | head -1 | cut -d' ' -f2) as PID 1 in $(systemd-detect-virt); mcpd $VERSION"
check install t_install
check postinst t_postinst
check security t_security
check "first install: starts and waits" t_first_start
check "first install: devices get MODEL_NOT_FOUND" t_first_error
check "first install: no restart loop, reload" t_first_no_restart
check "first install: model appears, picked up" t_first_model
check "start/status" t_start_status
check "journald fields" t_journal_fields
check "socket activation" t_socket_activation
check "reload: limit applied, session kept" t_reload_limit
check "reload: bad config rejected" t_reload_rejected
check "hardening probe" t_sandbox
sandbox_results
fault_on
check "readiness after the engine loads" t_readiness
check "stop drains in-flight answers" t_drain
check "watchdog restarts a hung mcpd" t_watchdog
fault_off
check "upgrade keeps the conffile, restarts" t_upgrade
check "remove and purge" t_remove
journalctl -b --no-pager >"$OUT/journal.txt" 2>&1
say "END"
