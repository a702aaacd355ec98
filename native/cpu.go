package native

/*
#include "mcpd_native.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"strings"

	"golang.org/x/sys/cpu"
)

// Instruction-set extensions the C side reports it was compiled for
// (mcpd_built_features). CGO_CFLAGS compile ggml and our C helper alike, so
// these are what the whole binary executes.
const (
	builtX86V3   = uint(C.MCPD_FEAT_X86_64_V3)
	builtNEON    = uint(C.MCPD_FEAT_NEON)
	builtVFPv4   = uint(C.MCPD_FEAT_VFPV4)
	builtDotProd = uint(C.MCPD_FEAT_DOTPROD)
	builtFP16    = uint(C.MCPD_FEAT_FP16)
	builtI8MM    = uint(C.MCPD_FEAT_I8MM)
	builtSVE     = uint(C.MCPD_FEAT_SVE)
)

// cpuNeeds maps each compiled-for extension to the CPU features (as named
// in the error message and in the have map) it requires, in report order.
var cpuNeeds = []struct {
	bit      uint
	label    string
	features []string
}{
	{builtX86V3, "x86-64-v3", []string{"AVX2", "FMA", "F16C", "BMI2"}},
	{builtNEON, "NEON", []string{"NEON"}},
	{builtVFPv4, "VFPv4", []string{"VFPv4"}},
	{builtDotProd, "dotprod", []string{"DOTPROD"}},
	{builtFP16, "fp16", []string{"FP16"}},
	{builtI8MM, "i8mm", []string{"I8MM"}},
	{builtSVE, "sve", []string{"SVE"}},
}

// CheckCPU reports ErrCPU when the binary was compiled for instructions
// this CPU lacks: x86-64-v3 (AVX2, FMA, F16C, BMI2) on amd64; NEON, VFPv4,
// dot product, FP16 arithmetic, int8 matrix multiply or SVE on ARM. Call it
// at startup: ggml would otherwise die with SIGILL mid-request. On Linux,
// golang.org/x/sys/cpu reads the ARM features from the kernel's HWCAP
// auxiliary vector (the source /proc/cpuinfo's Features line comes from).
func CheckCPU() error {
	return checkCPU(runtime.GOARCH, uint(C.mcpd_built_features()), cpuHas(runtime.GOARCH))
}

// cpuHas says which of the features named in cpuNeeds this CPU has.
func cpuHas(arch string) map[string]bool {
	switch arch {
	case "amd64", "386":
		return map[string]bool{
			"AVX2": cpu.X86.HasAVX2, "FMA": cpu.X86.HasFMA, "F16C": cpu.X86.HasF16C, "BMI2": cpu.X86.HasBMI2,
		}
	case "arm64":
		return map[string]bool{
			"NEON": cpu.ARM64.HasASIMD, "DOTPROD": cpu.ARM64.HasASIMDDP, "FP16": cpu.ARM64.HasASIMDHP,
			"I8MM": cpu.ARM64.HasI8MM, "SVE": cpu.ARM64.HasSVE,
		}
	case "arm":
		return map[string]bool{"NEON": cpu.ARM.HasNEON, "VFPv4": cpu.ARM.HasVFPv4}
	}
	return map[string]bool{}
}

func checkCPU(arch string, built uint, have map[string]bool) error {
	var missing []string
	for _, n := range cpuNeeds {
		if built&n.bit == 0 {
			continue
		}
		for _, f := range n.features {
			if !have[f] {
				missing = append(missing, f)
			}
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("%w: this %s binary was built for %s but the CPU lacks %s; %s",
		ErrCPU, arch, builtLabel(built), strings.Join(missing, ", "), cpuAdvice(arch))
}

// cpuAdvice says which build to use instead.
func cpuAdvice(arch string) string {
	switch arch {
	case "amd64":
		return "rebuild with NATIVE_CFLAGS='-O3 -march=x86-64' (see docs/native.md)"
	case "arm64":
		return "use the baseline arm64 build (-march=armv8-a, the default of make cross; see docs/cross.md)"
	case "arm":
		return "use an armv7 build without NEON (make cross CROSS_ARMV7_FPU=vfpv3-d16; see docs/cross.md)"
	}
	return "rebuild without -march flags"
}

func builtLabel(built uint) string {
	var labels []string
	for _, n := range cpuNeeds {
		if built&n.bit != 0 {
			labels = append(labels, n.label)
		}
	}
	if len(labels) == 0 {
		return "baseline"
	}
	return strings.Join(labels, "+")
}

// BuildInfo says what the binary was compiled for, for logs and /health:
// "amd64 x86-64-v3", "arm64 NEON+dotprod+fp16", "arm NEON+VFPv4".
func BuildInfo() string {
	return runtime.GOARCH + " " + builtLabel(uint(C.mcpd_built_features()))
}
