package detect

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeMachine writes files under a temporary root: path → content.
func fakeMachine(t testing.TB, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

const (
	cpuinfoX86 = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx avx2 fma f16c avx512f amx_tile\n\n" +
		"processor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx avx2 fma f16c avx512f amx_tile\n"
	cpuinfoARM = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid asimddp\n\n" +
		"processor\t: 1\nFeatures\t: fp asimd evtstrm crc32 cpuid asimddp\n\n" +
		"processor\t: 2\n\nprocessor\t: 3\nHardware\t: BCM2835\nModel\t: Raspberry Pi 5 Model B Rev 1.0\n"
	meminfo = "MemTotal:       16303368 kB\nMemFree:         1234567 kB\nMemAvailable:    8000000 kB\nBuffers: 1 kB\n"
)

// runner answers nvidia-smi with out, or fails as a machine without it.
func runner(out string, err error) CommandRunner {
	return func(_ context.Context, name string, args ...string) ([]byte, error) {
		if name != "nvidia-smi" || !slices.Contains(args, "--query-gpu=name,memory.total") {
			return nil, errors.New("unexpected command " + name)
		}
		return []byte(out), err
	}
}

var errNoSMI = errors.New(`exec: "nvidia-smi": executable file not found in $PATH`)

func TestDetectorProbe(t *testing.T) {
	tests := []struct {
		name     string
		files    map[string]string
		run      CommandRunner
		gpus     []string // vendor/name
		memBytes int64    // of the first GPU
		cpus     int
		features string
		jetson   bool
	}{
		{name: "cpu only x86", files: map[string]string{"proc/cpuinfo": cpuinfoX86, "proc/meminfo": meminfo},
			run: runner("", errNoSMI), cpus: 2, features: "avx avx2 fma f16c avx512f amx_tile"},
		{name: "raspberry pi", files: map[string]string{"proc/cpuinfo": cpuinfoARM, "proc/meminfo": meminfo},
			run: runner("", errNoSMI), cpus: 4, features: "asimd asimddp"},
		{name: "nvidia with nvidia-smi", files: map[string]string{"proc/cpuinfo": cpuinfoX86,
			"proc/driver/nvidia/version": "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15\nGCC version: 12\n",
			"dev/nvidia0":                "", "dev/nvidiactl": "", "dev/nvidia-uvm": ""},
			run:  runner("NVIDIA H100 80GB HBM3, 81559\nNVIDIA H100 80GB HBM3, 81559\n", nil),
			gpus: []string{"nvidia/NVIDIA H100 80GB HBM3", "nvidia/NVIDIA H100 80GB HBM3"}, memBytes: 81559 << 20, cpus: 2,
			features: "avx avx2 fma f16c avx512f amx_tile"},
		{name: "nvidia driver files, no nvidia-smi", files: map[string]string{
			"proc/driver/nvidia/version":                       "NVRM version: 535\n",
			"proc/driver/nvidia/gpus/0000:01:00.0/information": "Model: \t\t NVIDIA GeForce RTX 3060\nIRQ: 130\n",
			"dev/nvidia0": ""},
			run: runner("", errNoSMI), gpus: []string{"nvidia/NVIDIA GeForce RTX 3060"}},
		{name: "nvidia driver not ready (boot race)", files: map[string]string{"dev/nvidiactl": ""},
			run: runner("", errors.New("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver"))},
		{name: "nvidia driver without device nodes", files: map[string]string{"proc/driver/nvidia/version": "NVRM 535\n"},
			run: runner("", errNoSMI)},
		{name: "nvidia-smi says no devices", files: map[string]string{"proc/driver/nvidia/version": "NVRM 535\n", "dev/nvidia0": ""},
			run: runner("No devices were found\n", nil)},
		{name: "jetson", files: map[string]string{"etc/nv_tegra_release": "# R36 (release), REVISION: 3.0\n", "proc/meminfo": meminfo},
			run: runner("", errNoSMI), gpus: []string{"nvidia/Jetson (Tegra)"}, jetson: true},
		{name: "amd rocm", files: map[string]string{"dev/kfd": "",
			"sys/class/drm/card0/device/vendor":              "0x1002\n",
			"sys/class/drm/card0/device/product_name":        "Radeon RX 7900 XTX\n",
			"sys/class/drm/card0/device/mem_info_vram_total": "25753026560\n",
			"sys/class/drm/card1/device/vendor":              "0x8086\n"},
			run: runner("", errNoSMI), gpus: []string{"amd/Radeon RX 7900 XTX"}, memBytes: 25753026560},
		{name: "amd card without /dev/kfd", files: map[string]string{"sys/class/drm/card0/device/vendor": "0x1002\n"},
			run: runner("", errNoSMI)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := Detector{Root: fakeMachine(t, tt.files), Run: tt.run}.Probe(context.Background())
			var gpus []string
			for _, g := range m.GPUs {
				gpus = append(gpus, g.Vendor+"/"+g.Name)
			}
			if !slices.Equal(gpus, tt.gpus) {
				t.Fatalf("GPUs %q, want %q", gpus, tt.gpus)
			}
			if m.HasGPU() != (len(tt.gpus) > 0) || m.Jetson != tt.jetson {
				t.Fatalf("HasGPU %v Jetson %v", m.HasGPU(), m.Jetson)
			}
			if tt.memBytes != 0 && m.GPUs[0].MemoryBytes != tt.memBytes {
				t.Fatalf("GPU memory %d, want %d", m.GPUs[0].MemoryBytes, tt.memBytes)
			}
			if tt.cpus != 0 && m.CPUs != tt.cpus {
				t.Fatalf("%d CPUs, want %d", m.CPUs, tt.cpus)
			}
			if m.CPUs <= 0 {
				t.Fatal("no CPU count")
			}
			if tt.features != "" && strings.Join(m.CPUFeatures, " ") != tt.features {
				t.Fatalf("features %q, want %q", m.CPUFeatures, tt.features)
			}
			if tt.files["proc/meminfo"] != "" && (m.MemAvailable != 8000000<<10 || m.MemTotal != 16303368<<10) {
				t.Fatalf("memory %d/%d", m.MemAvailable, m.MemTotal)
			}
		})
	}
}

func TestDetectorRealMachine(t *testing.T) {
	m := Detector{}.Probe(context.Background())
	if m.CPUs <= 0 || m.MemAvailable <= 0 || m.MemTotal < m.MemAvailable {
		t.Fatalf("%+v", m)
	}
	t.Log(m.Summary())
}

// FuzzDetectParsers: whatever the files hold, the parsers return sane
// values and never panic.
func FuzzDetectParsers(f *testing.F) {
	for _, s := range []string{cpuinfoX86, cpuinfoARM, meminfo, "NVIDIA H100 80GB HBM3, 81559\n", "No devices were found",
		"MemAvailable: -5 kB\n", "MemTotal: 99999999999999999999 kB", ",,,\n, 12\nx,\n", "processor:\nflags:" + strings.Repeat(" avx", 1000)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cpus, _, features := parseCPUInfo(b)
		if cpus < 0 || len(features) > len(llamaFeatures) {
			t.Fatalf("cpus %d features %d", cpus, len(features))
		}
		total, avail := parseMeminfo(b)
		if total < 0 || avail < 0 {
			t.Fatalf("memory %d %d", total, avail)
		}
		for _, g := range parseNvidiaSMI(b) {
			if g.Name == "" || g.MemoryBytes < 0 {
				t.Fatalf("%+v", g)
			}
		}
	})
}
