# Sourced by the cross/ scripts: what each build target means.
#
# target_env TARGET sets, for one target:
#   GOARCH GOARM  Go's target
#   CC CXX        the C/C++ cross compilers (Debian's gcc-<triplet> packages)
#   CFLAGS        -O and -march/-mfpu for llama.cpp/ggml (CGO_CFLAGS/CXXFLAGS)
#   CPPFLAGS      extra preprocessor flags (CGO_CPPFLAGS)
#   TRIPLET       GNU triplet; its sysroot is /usr/$TRIPLET (qemu -L)
#   QEMU          the qemu-user binary that runs it on amd64 ("" = native)
#   DEBARCH       Debian architecture name
#   APT_PKGS      Debian packages that build it
#
# The CPU flags are chosen per target (docs/cross.md says why), and
# native.CheckCPU refuses, at start, a CPU that lacks what they enable:
#   amd64  -march=x86-64-v3            AVX2/FMA/F16C: Haswell, Zen 1 and later
#   arm64  -march=armv8-a              every 64-bit ARM (Pi 3/4/5, Jetson);
#          CROSS_ARM64_MARCH=armv8.2-a+dotprod+fp16 for Cortex-A55/A76 (Pi 5,
#          RK3588): SDOT and FP16 arithmetic in ggml's kernels; refused on a Pi 4
#   armv7  -march=armv7-a -mfpu=neon-vfpv4 -mfloat-abi=hard -mfp16-format=ieee
#          NEON with FMA (Cortex-A7/A15/A53/A72 in 32-bit mode: Pi 2/3/4 on a
#          32-bit OS); ggml's NEON vector code needs __ARM_FEATURE_FMA, i.e.
#          VFPv4; its fp16 conversions use __fp16, which 32-bit GCC only
#          knows with -mfp16-format=ieee. CROSS_ARMV7_FPU=vfpv3-d16 builds a generic one for
#          Cortex-A8/A9. ollama's ggml ships ARM-specific quant kernels for
#          arm64 only, so armv7 always uses ggml's generic quant kernels
#          (-DGGML_CPU_GENERIC); without it the link fails.
# Never -march=native: the build machine is not the board.

CROSS_TARGETS_DEFAULT="amd64 arm64 armv7"

target_env() {
	GOARM= CPPFLAGS= QEMU=
	case "$1" in
	amd64)
		GOARCH=amd64 TRIPLET=x86_64-linux-gnu DEBARCH=amd64
		CC=gcc CXX=g++
		CFLAGS="-O3 -march=${CROSS_AMD64_MARCH:-x86-64-v3}"
		APT_PKGS="gcc g++"
		;;
	arm64)
		GOARCH=arm64 TRIPLET=aarch64-linux-gnu DEBARCH=arm64
		CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++
		CFLAGS="-O3 -march=${CROSS_ARM64_MARCH:-armv8-a}"
		QEMU=qemu-aarch64-static
		APT_PKGS="gcc-aarch64-linux-gnu g++-aarch64-linux-gnu"
		;;
	armv7)
		GOARCH=arm GOARM=7 TRIPLET=arm-linux-gnueabihf DEBARCH=armhf
		CC=arm-linux-gnueabihf-gcc CXX=arm-linux-gnueabihf-g++
		CFLAGS="-O3 -march=armv7-a -mfpu=${CROSS_ARMV7_FPU:-neon-vfpv4} -mfloat-abi=hard -mfp16-format=ieee"
		CPPFLAGS="-DGGML_CPU_GENERIC"
		QEMU=qemu-arm-static
		APT_PKGS="gcc-arm-linux-gnueabihf g++-arm-linux-gnueabihf"
		;;
	*)
		echo "unknown target $1 (want one of: $CROSS_TARGETS_DEFAULT)" >&2
		return 1
		;;
	esac
	if [ -n "$QEMU" ]; then
		APT_PKGS="$APT_PKGS qemu-user-static"
		# Go's asynchronous preemption (a SIGURG to a running thread) is
		# not safe under qemu-user: golang/go#36981, still open, reports
		# random segfaults, illegal instructions and scheduler panics. Seen
		# here too: a test binary under qemu-aarch64 aborting in glibc's
		# pthread_mutex_lock on a mutex it never made. qemu passes
		# QEMU_SET_ENV into the guest's environment only, so the ARM
		# programs (tests, e2e mcpd) run with cooperative preemption and
		# the amd64 tools beside them are untouched. A real board needs none
		# of this.
		export QEMU_SET_ENV=GODEBUG=asyncpreemptoff=1
	fi
}

# export_target_env exports the Go/cgo environment of the current target.
export_target_env() {
	export CGO_ENABLED=1 GOOS=linux GOARCH GOARM CC CXX
	export CGO_CFLAGS="$CFLAGS" CGO_CXXFLAGS="$CFLAGS" CGO_CPPFLAGS="$CPPFLAGS"
	if [ -z "$GOARM" ]; then unset GOARM; fi
}

# cross_version: the version stamped into binaries and packages, from git.
# A tag vX.Y.Z gives X.Y.Z (X.Y.Z+N.gHASH after it); without tags,
# 0~gitYYYYMMDD.HASH from the commit date (not the clock, so rebuilding the
# same commit gives the same bytes); +dirty marks uncommitted changes.
cross_version() {
	local desc date hash dirty=""
	if ! git rev-parse --git-dir >/dev/null 2>&1; then
		echo 0~unknown
		return
	fi
	git diff --quiet HEAD 2>/dev/null || dirty="+dirty"
	if desc=$(git describe --tags --match 'v[0-9]*' 2>/dev/null); then
		desc=${desc#v}
		# 1.2.3-4-gabcdef0 -> 1.2.3+4.gabcdef0
		echo "$(printf '%s' "$desc" | sed -E 's/-([0-9]+)-g([0-9a-f]+)$/+\1.g\2/')$dirty"
		return
	fi
	date=$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d)
	hash=$(git rev-parse --short=7 HEAD)
	echo "0~git$date.$hash$dirty"
}
