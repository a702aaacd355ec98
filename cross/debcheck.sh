#!/usr/bin/env bash
# Checks a built mcpd .deb (CI runs it through make deb): control fields,
# the file list with owners and modes, the conffile, the maintainer
# scripts' user handling, that Depends covers every library the binaries
# load, the binaries' architecture, and that the packaged mcpd runs (under
# qemu-user for ARM) and reports the package's version.
# Usage: cross/debcheck.sh DEB TARGET
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/targets.sh"
cd "$root"

deb=$1
target=$2
target_env "$target"
fail=0
bad() { echo "debcheck: $(basename "$deb"): $*" >&2; fail=1; }

field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = mcpd ] || bad "Package is $(field Package)"
[ "$(field Architecture)" = "$DEBARCH" ] || bad "Architecture $(field Architecture), want $DEBARCH"
version=$(field Version)
case "$(basename "$deb")" in "mcpd_${version}_$DEBARCH.deb") ;; *) bad "file name does not match version $version" ;; esac

# file list: "-rwxr-xr-x root/root 1234 2026-11-25 18:00 ./usr/bin/mcpd"
list=$(dpkg-deb -c "$deb")
want_file() { # MODE PATH
	local line
	line=$(awk -v p="./$2" '$6 == p' <<<"$list")
	[ -n "$line" ] || { bad "missing $2"; return; }
	read -r mode owner _ <<<"$line"
	[ "$mode" = "$1" ] || bad "$2 has mode $mode, want $1"
	[ "$owner" = root/root ] || bad "$2 owned by $owner, want root/root"
}
want_file -rwxr-xr-x usr/bin/mcpd
want_file -rwxr-xr-x usr/bin/mcpctl
want_file -rwxr-xr-x usr/bin/mcpd-mkmodel
want_file -rw-r--r-- etc/mcpd/mcpd.toml
want_file -rw-r--r-- usr/share/doc/mcpd/copyright
want_file -rw-r--r-- usr/share/doc/mcpd/changelog.gz
for u in mcpd.service mcpd.socket; do
	[ -f "systemd/$u" ] && want_file -rw-r--r-- "lib/systemd/system/$u"
done
[ -f systemd/mcpd.sysusers ] && want_file -rw-r--r-- usr/lib/sysusers.d/mcpd.conf
if awk '{print $2}' <<<"$list" | grep -qv '^root/root$'; then bad "files not owned by root"; fi

ctrl=$(mktemp -d)
trap 'rm -rf "$ctrl"' EXIT
dpkg-deb -e "$deb" "$ctrl/DEBIAN"
dpkg-deb -x "$deb" "$ctrl/root"
[ "$(cat "$ctrl/DEBIAN/conffiles")" = /etc/mcpd/mcpd.toml ] || bad "conffiles: $(cat "$ctrl/DEBIAN/conffiles")"
grep -q 'adduser --quiet --system --group' "$ctrl/DEBIAN/postinst" || bad "postinst creates no system user"
grep -q 'adduser --quiet mcpd dialout' "$ctrl/DEBIAN/postinst" || bad "postinst does not add mcpd to dialout"
for s in postinst prerm postrm; do
	sh -n "$ctrl/DEBIAN/$s" || bad "$s: syntax error"
	grep -q '@UNITS@' "$ctrl/DEBIAN/$s" && bad "$s: @UNITS@ not substituted"
done
(cd "$ctrl/root" && md5sum --quiet -c "$ctrl/DEBIAN/md5sums") || bad "md5sums do not match"

# Depends must name each library's package at the version the binaries need.
depends=$(field Depends)
need=$("$here/debdeps.sh" "$ctrl/root/usr/bin/mcpd" "$ctrl/root/usr/bin/mcpctl" "$ctrl/root/usr/bin/mcpd-mkmodel")
IFS=, read -ra parts <<<"$need"
for p in "${parts[@]}"; do
	p=${p# }
	grep -qF "$p" <<<"$depends" || bad "Depends ($depends) lacks $p"
done
for lib in $(readelf -d -W "$ctrl/root/usr/bin/mcpd" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
	case "$lib" in
	libstdc++*) grep -q 'libstdc++6 (>= ' <<<"$depends" || bad "mcpd needs $lib; Depends lacks libstdc++6" ;;
	libc.so*) grep -q 'libc6 (>= ' <<<"$depends" || bad "mcpd needs $lib; Depends lacks libc6" ;;
	esac
done

# The binaries are this architecture's, stripped, and the packaged mcpd runs.
case "$DEBARCH" in amd64) machine='X86-64' ;; arm64) machine='AArch64' ;; armhf) machine='ARM' ;; esac
for b in mcpd mcpctl mcpd-mkmodel; do
	f=$ctrl/root/usr/bin/$b
	readelf -h "$f" | grep -q "Machine:.* $machine\$" || bad "$b is not $machine: $(readelf -h "$f" | grep Machine)"
	readelf -S -W "$f" | grep -q '\.symtab\|\.debug_' && bad "$b is not stripped"
done
run=()
[ -n "$QEMU" ] && run=("$QEMU" -L "/usr/$TRIPLET")
got=$("${run[@]}" "$ctrl/root/usr/bin/mcpd" --version 2>&1) || bad "packaged mcpd --version failed: $got"
[ "$got" = "mcpd $version" ] || bad "packaged mcpd --version says '$got', want 'mcpd $version'"

# Every Go module compiled in is named in the copyright file.
for m in $(go version -m "$ctrl/root/usr/bin/mcpd" "$ctrl/root/usr/bin/mcpctl" "$ctrl/root/usr/bin/mcpd-mkmodel" | awk '$1 == "dep" { print $2 }' | sort -u); do
	grep -qF "vendor/$m/*" "$ctrl/root/usr/share/doc/mcpd/copyright" || bad "copyright does not name $m (compiled into the binaries)"
done

if [ "$fail" != 0 ]; then exit 1; fi
echo "debcheck: $(basename "$deb"): ok (Depends: $depends)"
