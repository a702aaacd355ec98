#!/bin/sh
# Measures the C library's flash and RAM on Cortex-M0+ and Cortex-M4 with
# Debian's gcc-arm-none-eabi (-Os), with and without signing, per object
# and for two linked minimal firmwares (--gc-sections). Prints Markdown.
# Usage: footprint/footprint.sh [OUTDIR]   (run from clients/c)
set -eu
out=${1:-build/footprint}
mkdir -p "$out"
CC=arm-none-eabi-gcc
SIZE=arm-none-eabi-size
NM=arm-none-eabi-nm
M0="-mcpu=cortex-m0plus -mthumb"
M4="-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16"
COMMON="-std=c99 -Os -ffunction-sections -fdata-sections -Wall -Wextra -Werror -Iinclude"
objs="crc frame decoder msg frag session sign tools"

# text+data (flash) and data+bss (static RAM) of one file
flash() { $SIZE "$1" | awk 'NR==2 {print $1 + $2}'; }
ram() { $SIZE "$1" | awk 'NR==2 {print $2 + $3}'; }
sz() { printf '%d' "0x$($NM -S "$1" | awk -v s="size_$2" '$4 == s {print $2}')"; }

echo "Compiler: $($CC --version | head -1)"
echo
echo "Flash (text + data, bytes) per object; no object has static RAM: all state is in the caller's structures."
echo
echo "| object | M0+ | M0+ signed | M4 | M4 signed |"
echo "|---|---:|---:|---:|---:|"
for o in $objs; do
	row="| mcpf_$o.o"
	for cpu in M0 M4; do
		eval flags=\$$cpu
		for sign in 0 1; do
			f="$out/${o}_${cpu}_$sign.o"
			$CC $flags $COMMON -DMCPF_SIGN=$sign -c "src/mcpf_$o.c" -o "$f"
			row="$row | $(flash "$f")"
		done
	done
	echo "$row |"
done
for cpu in M0 M4; do
	eval flags=\$$cpu
	for sign in 0 1; do
		$CC $flags $COMMON -DMCPF_SIGN=$sign -c footprint/sizes.c -o "$out/sizes_${cpu}_$sign.o"
	done
done
echo
echo "RAM the caller owns (sizeof, bytes):"
echo
echo "| structure | M0+ | M0+ signed | M4 | M4 signed |"
echo "|---|---:|---:|---:|---:|"
for s in mcpf_decoder mcpf_session mcpf_reasm; do
	echo "| $s | $(sz "$out/sizes_M0_0.o" $s) | $(sz "$out/sizes_M0_1.o" $s) | $(sz "$out/sizes_M4_0.o" $s) | $(sz "$out/sizes_M4_1.o" $s) |"
done
echo
echo "Linked minimal firmwares (--gc-sections, newlib-nano for memcpy/memmove/memset/strlen):"
echo
echo "min_device_notools is min_device built with MCPF_DEVICE_TOOLS=0 (no device tools in the session);"
echo "min_tools is min_device declaring two tools (read_soil, set_relay) and asking with TOOLS_ON (§16)."
echo
echo "| firmware | CPU | signing | flash | static RAM |"
echo "|---|---|---|---:|---:|"
for prog in min_codec min_device_notools min_device min_tools; do
	for cpu in M0 M4; do
		eval flags=\$$cpu
		for sign in 0 1; do
			[ "$prog" = min_codec ] && [ $sign = 1 ] && continue
			elf="$out/${prog}_${cpu}_$sign.elf"
			src=$prog extra=
			[ "$prog" = min_device_notools ] && src=min_device extra=-DMCPF_DEVICE_TOOLS=0
			[ "$prog" = min_tools ] && src=min_device extra=-DMIN_TOOLS=1
			$CC $flags $COMMON $extra -DMCPF_SIGN=$sign --specs=nano.specs -nostartfiles -Wl,--gc-sections \
				-Wl,-e,Reset_Handler -o "$elf" "footprint/$src.c" src/*.c
			echo "| $prog | $cpu | $sign | $(flash "$elf") | $(ram "$elf") |"
		done
	done
done
