#!/usr/bin/env bash
# Builds $DEB_DIST/mcpd_<version>_<debarch>.deb from the TARGET's cross
# build with dpkg-deb (Debian's own tool; no packaging tool to fetch),
# runs lintian on it (errors fail the build) and checks its contents
# (cross/debcheck.sh).
#
# Contents: /usr/bin/mcpd, /usr/bin/mcpctl, /usr/bin/mcpd-mkmodel (writes a
# demo model for a first install); /etc/mcpd/mcpd.toml (conffile);
# the systemd units, sysusers file and udev example from systemd/ when
# present; docs. The maintainer scripts (cross/deb/) create the system user
# "mcpd" in group dialout. Depends comes from the binaries' NEEDED
# libraries (cross/debdeps.sh). Reproducible: file times are the commit's
# (SOURCE_DATE_EPOCH), owners root, and dpkg-deb stamps SOURCE_DATE_EPOCH.
# Usage: cross/deb.sh TARGET
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/targets.sh"
cd "$root"

target=$1
target_env "$target"
"$here/toolchain.sh" --deb
dist=${CROSS_DIST:-$root/dist/cross}
debdist=${DEB_DIST:-$root/dist/deb}
bins=$dist/linux-$target
version=$(cat "$bins/VERSION")
maintainer=${DEB_MAINTAINER:-$(git log -1 --format='%an <%ae>')}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
deb=$debdist/mcpd_${version}_$DEBARCH.deb

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg=$work/mcpd
mkdir -p "$pkg/DEBIAN" "$debdist"

install -D -m 0755 "$bins/mcpd" "$pkg/usr/bin/mcpd"
install -D -m 0755 "$bins/mcpctl" "$pkg/usr/bin/mcpctl"
# A first install has no model; mcpd waits for one (docs/systemd.md), and
# mcpd-mkmodel writes a small demo one (random weights: gibberish answers)
# that shows the whole path works before a real model is chosen.
install -D -m 0755 "$bins/mcpd-mkmodel" "$pkg/usr/bin/mcpd-mkmodel"

# The default configuration: the systemd helper's if systemd/ ships one,
# else the example config mcpd documents (cmd/mcpd/mcpd.toml).
config=cmd/mcpd/mcpd.toml
[ -f systemd/mcpd.toml ] && config=systemd/mcpd.toml
install -D -m 0644 "$config" "$pkg/etc/mcpd/mcpd.toml"
echo /etc/mcpd/mcpd.toml >"$pkg/DEBIAN/conffiles"

# systemd units (Debian 12 keeps them in /lib/systemd/system), sysusers.
units=()
for u in mcpd.service mcpd.socket; do
	if [ -f "systemd/$u" ]; then
		install -D -m 0644 "systemd/$u" "$pkg/lib/systemd/system/$u"
		units+=("$u")
	fi
done
[ -f systemd/mcpd.sysusers ] && install -D -m 0644 systemd/mcpd.sysusers "$pkg/usr/lib/sysusers.d/mcpd.conf"
if [ ${#units[@]} -eq 0 ]; then
	echo "deb: no systemd units in systemd/ yet; packaging without them" >&2
fi

doc=$pkg/usr/share/doc/mcpd
install -D -m 0644 "$here/deb/copyright" "$doc/copyright"
for d in README.md docs/protocol.md docs/cross.md docs/systemd.md docs/real-model.md; do
	[ -f "$d" ] && install -m 0644 "$d" "$doc/"
done
[ -f systemd/60-mcpd-serial.rules ] && install -D -m 0644 systemd/60-mcpd-serial.rules "$doc/examples/60-mcpd-serial.rules"
{
	printf 'mcpd (%s) unstable; urgency=medium\n\n' "$version"
	printf '  * Built from git commit %s.\n\n' "$(git rev-parse HEAD)"
	printf ' -- %s  %s\n' "$maintainer" "$(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.gz"

for s in postinst prerm postrm; do
	sed "s/@UNITS@/${units[*]:-mcpd.service}/" "$here/deb/$s" >"$pkg/DEBIAN/$s"
	chmod 0755 "$pkg/DEBIAN/$s"
done

depends=$("$here/debdeps.sh" "$pkg/usr/bin/mcpd" "$pkg/usr/bin/mcpctl" "$pkg/usr/bin/mcpd-mkmodel")
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: mcpd
Version: $version
Architecture: $DEBARCH
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
Depends: adduser, $depends
Section: net
Priority: optional
Homepage: https://github.com/mcpd-project/mcpd
Description: local LLM daemon for microcontrollers (serial and UDP)
 mcpd lets microcontrollers (ESP32, RP2040, STM32, ...) use a local large
 language model. Devices speak a small binary frame protocol (MCPFrame) over
 a serial UART or UDP; mcpd runs inference in-process with llama.cpp (or
 through a local Ollama server) and streams the tokens back.
 .
 This package has mcpd, the mcpctl tool, mcpd-mkmodel (writes a small
 demo model), the systemd units and the default configuration
 (/etc/mcpd/mcpd.toml). systemctl enable --now mcpd starts it; until a GGUF
 model is at /var/lib/mcpd/models/model.gguf it answers devices
 MODEL_NOT_FOUND, and it loads the model as soon as the file is there.
CONTROL
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$pkg/DEBIAN/md5sums"
find "$pkg" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "deb: $deb ($(stat -c %s "$deb") bytes), Depends: adduser, $depends"

# lintian: errors fail; warnings and info are printed for the record.
lintian --fail-on error --tag-display-limit 0 "$deb" | tee "$debdist/lintian-$DEBARCH.txt" || {
	echo "deb: lintian found errors in $deb" >&2
	exit 1
}
"$here/debcheck.sh" "$deb" "$target"
