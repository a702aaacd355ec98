#!/usr/bin/env bash
# Prints the Depends: value for the ELF binaries given, from their NEEDED
# libraries and the newest symbol version each needs (readelf -d / -V), the
# way dpkg-shlibdeps would for a native build (it cannot read the
# cross-toolchain's libraries). A library not in the table below fails the
# build: a new runtime dependency must be looked at, not shipped blind.
#   libc.so.6 libm.so.6 ld-linux*  -> libc6 (>= newest GLIBC_x.y)
#   libstdc++.so.6                 -> libstdc++6 (>= the GCC release that
#                                      introduced the newest GLIBCXX_3.4.N)
#   libgcc_s.so.1                  -> libgcc-s1 (>= newest GCC_x.y)
# Usage: cross/debdeps.sh BINARY...
set -euo pipefail

# GLIBCXX_3.4.N -> first GCC release providing it (GCC's libstdc++ ABI docs).
glibcxx_gcc() {
	case "$1" in
	3.4.3[3-9]) echo 15 ;; 3.4.32) echo 14 ;; 3.4.31) echo 13 ;; 3.4.30) echo 12 ;;
	3.4.29) echo 11 ;; 3.4.28) echo 9.3 ;; 3.4.27) echo 9.2 ;; 3.4.26) echo 9 ;;
	3.4.25) echo 8 ;; 3.4.24) echo 7.2 ;; 3.4.23) echo 7 ;; 3.4.22) echo 6 ;;
	3.4.21) echo 5 ;; 3.4.2[0-9] | 3.4.1[0-9] | 3.4.[0-9]) echo 4.4 ;;
	*) echo "debdeps: unknown libstdc++ version GLIBCXX_$1" >&2; return 1 ;;
	esac
}

# newest VERSION-PREFIX_x.y[.z] that the binaries need from LIB
newest() {
	local lib=$1 prefix=$2
	shift 2
	for b in "$@"; do
		# readelf -V: "  0x0010: Version: 1  File: libc.so.6  Cnt: 5" then
		# "  0x0020:   Name: GLIBC_2.34  Flags: none  Version: 7"
		LC_ALL=C readelf -V -W "$b" | awk -v lib="$lib" -v p="$prefix" '
			/File: / { cur = 0; for (i = 1; i <= NF; i++) if ($i == "File:" && $(i+1) == lib) cur = 1 }
			cur && /Name: / { for (i = 1; i <= NF; i++) if ($i == "Name:") { n = $(i+1); if (index(n, p "_") == 1) print substr(n, length(p) + 2) } }'
	done | sort -V | tail -n 1
}

for b in "$@"; do
	[ -f "$b" ] || { echo "debdeps: $b: no such file" >&2; exit 1; }
done
declare -A seen=()
for b in "$@"; do
	for lib in $(LC_ALL=C readelf -d -W "$b" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
		seen[$lib]=1
	done
done
deps=()
libc=""
for lib in "${!seen[@]}"; do
	case "$lib" in
	libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux*.so.*)
		v=$(newest "$lib" GLIBC "$@")
		if [ -n "$v" ] && { [ -z "$libc" ] || [ "$(printf '%s\n%s\n' "$libc" "$v" | sort -V | tail -n1)" = "$v" ]; }; then libc=$v; fi
		;;
	libstdc++.so.6)
		v=$(newest "$lib" GLIBCXX "$@")
		deps+=("libstdc++6 (>= $(glibcxx_gcc "${v:-3.4}"))")
		;;
	libgcc_s.so.1)
		v=$(newest "$lib" GCC "$@")
		deps+=("libgcc-s1 (>= ${v:-3.0})")
		;;
	*)
		echo "debdeps: $lib is not in cross/debdeps.sh's table; add its Debian package" >&2
		exit 1
		;;
	esac
done
if [ ${#seen[@]} -gt 0 ]; then
	deps+=("libc6 (>= ${libc:-2.17})")
fi
printf '%s\n' "${deps[@]}" | LC_ALL=C sort | paste -sd, - | sed 's/,/, /g'
