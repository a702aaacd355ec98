// Package detect finds out what a machine offers an inference engine: GPUs
// (NVIDIA through its driver files, device nodes and nvidia-smi; Jetson;
// AMD through /dev/kfd and /sys/class/drm), CPU cores and features, and
// memory. Everything is read below an injectable root directory and every
// command runs through an injectable runner, so tests can present any
// machine. It is pure Go and imports nothing of mcpd's.
package detect

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// CommandRunner runs a program and returns its standard output. The
// detector runs nvidia-smi through it; tests present any machine with a
// fake one.
type CommandRunner func(ctx context.Context, name string, args ...string) ([]byte, error)

// ExecRunner runs real programs, each bounded by 5 s.
func ExecRunner(ctx context.Context, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, name, args...).Output()
}

// Detector finds out what the machine offers an inference engine. It reads
// everything below Root ("/" on a real machine) and runs commands through
// Run, so a test can present a GPU box or a bare CPU board.
type Detector struct {
	Root string        // default "/"
	Run  CommandRunner // default ExecRunner; nil-safe
}

// GPU is one accelerator the detector found.
type GPU struct {
	Vendor      string // "nvidia" or "amd"
	Name        string
	MemoryBytes int64  // 0: unknown or shared with the CPU (Jetson)
	Source      string // what showed it: nvidia-smi, /proc/driver/nvidia, /dev/kfd + /sys/class/drm, nv_tegra_release
}

// Machine is what one probe saw.
type Machine struct {
	GPUs []GPU
	// NVIDIADriver is the first line of /proc/driver/nvidia/version.
	NVIDIADriver string
	// NVIDIADeviceNodes counts /dev/nvidia0, /dev/nvidia1, ...
	NVIDIADeviceNodes int
	Jetson            bool
	CPUs              int
	CPUModel          string
	// CPUFeatures are the flags that matter to llama.cpp (avx, avx2, fma,
	// f16c, avx512f, avx512_vnni, amx_tile, asimd, sve, ...).
	CPUFeatures  []string
	MemTotal     int64 // bytes, from /proc/meminfo
	MemAvailable int64 // bytes; 0: unknown
	ProbedAt     time.Time
}

// HasGPU reports whether an accelerator usable by Ollama was found.
func (m Machine) HasGPU() bool { return len(m.GPUs) > 0 }

// Summary is a one-line description for logs and selection reasons.
func (m Machine) Summary() string {
	var b strings.Builder
	if len(m.GPUs) == 0 {
		b.WriteString("no GPU")
	}
	for i, g := range m.GPUs {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %s", g.Vendor, g.Name)
		if g.MemoryBytes > 0 {
			fmt.Fprintf(&b, " %d MiB", g.MemoryBytes>>20)
		}
	}
	fmt.Fprintf(&b, "; %d CPUs", m.CPUs)
	if len(m.CPUFeatures) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(m.CPUFeatures, " "))
	}
	if m.MemAvailable > 0 {
		fmt.Fprintf(&b, "; %d MiB available", m.MemAvailable>>20)
	}
	return b.String()
}

// SameHardware reports whether two probes saw the same accelerators (memory
// moves all the time and is not a reason to re-select).
func (m Machine) SameHardware(o Machine) bool {
	return slices.EqualFunc(m.GPUs, o.GPUs, func(a, b GPU) bool { return a.Vendor == b.Vendor && a.Name == b.Name })
}

// Probe looks at the machine now. It never fails: what cannot be read is
// left out (a GPU driver not loaded yet looks like no GPU, which is why
// callers probe again later).
func (d Detector) Probe(ctx context.Context) Machine {
	root := d.Root
	if root == "" {
		root = "/"
	}
	fsys := os.DirFS(root)
	run := d.Run
	if run == nil {
		run = ExecRunner
	}
	m := Machine{ProbedAt: time.Now()}
	if b, err := fs.ReadFile(fsys, "proc/cpuinfo"); err == nil {
		m.CPUs, m.CPUModel, m.CPUFeatures = parseCPUInfo(b)
	}
	if m.CPUs == 0 {
		m.CPUs = runtime.NumCPU()
	}
	if b, err := fs.ReadFile(fsys, "proc/meminfo"); err == nil {
		m.MemTotal, m.MemAvailable = parseMeminfo(b)
	}
	d.probeNVIDIA(ctx, fsys, run, &m)
	probeAMD(fsys, &m)
	return m
}

func (d Detector) probeNVIDIA(ctx context.Context, fsys fs.FS, run CommandRunner, m *Machine) {
	if b, err := fs.ReadFile(fsys, "proc/driver/nvidia/version"); err == nil {
		m.NVIDIADriver, _, _ = strings.Cut(strings.TrimSpace(string(b)), "\n")
	}
	nodes, _ := fs.Glob(fsys, "dev/nvidia[0-9]*")
	for _, n := range nodes {
		if _, err := strconv.Atoi(strings.TrimPrefix(path.Base(n), "nvidia")); err == nil {
			m.NVIDIADeviceNodes++
		}
	}
	if _, err := fs.Stat(fsys, "etc/nv_tegra_release"); err == nil {
		// Jetson: an integrated GPU sharing the CPU's memory; no
		// nvidia-smi on most L4T releases.
		m.Jetson = true
		m.GPUs = append(m.GPUs, GPU{Vendor: "nvidia", Name: "Jetson (Tegra)", Source: "/etc/nv_tegra_release"})
		return
	}
	if m.NVIDIADriver == "" && m.NVIDIADeviceNodes == 0 {
		return // no driver: nvidia-smi would only fail (or hang waiting for one)
	}
	if out, err := run(ctx, "nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"); err == nil {
		// nvidia-smi talks to the driver: what it lists (maybe nothing)
		// is the truth.
		m.GPUs = append(m.GPUs, parseNvidiaSMI(out)...)
		return
	}
	// No nvidia-smi: the driver's own files name the GPUs; without device
	// nodes nothing can use them.
	if m.NVIDIADriver == "" || m.NVIDIADeviceNodes == 0 {
		return
	}
	infos, _ := fs.Glob(fsys, "proc/driver/nvidia/gpus/*/information")
	for _, p := range infos {
		name := "GPU"
		if b, err := fs.ReadFile(fsys, p); err == nil {
			name = cmp.Or(field(b, "Model:"), name)
		}
		m.GPUs = append(m.GPUs, GPU{Vendor: "nvidia", Name: name, Source: "/proc/driver/nvidia"})
	}
	if len(infos) == 0 {
		m.GPUs = append(m.GPUs, GPU{Vendor: "nvidia", Name: "GPU", Source: "/dev/nvidia*"})
	}
}

// probeAMD: ROCm needs /dev/kfd and a card whose PCI vendor is AMD.
func probeAMD(fsys fs.FS, m *Machine) {
	if _, err := fs.Stat(fsys, "dev/kfd"); err != nil {
		return
	}
	cards, _ := fs.Glob(fsys, "sys/class/drm/card[0-9]*/device/vendor")
	for _, v := range cards {
		b, err := fs.ReadFile(fsys, v)
		if err != nil || strings.TrimSpace(string(b)) != "0x1002" {
			continue
		}
		dev := path.Dir(v)
		card := path.Base(path.Dir(dev))
		if strings.Contains(card, "-") { // card0-HDMI-A-1: a connector, not a card
			continue
		}
		g := GPU{Vendor: "amd", Name: card, Source: "/dev/kfd + /sys/class/drm"}
		if b, err := fs.ReadFile(fsys, dev+"/product_name"); err == nil && len(bytes.TrimSpace(b)) > 0 {
			g.Name = strings.TrimSpace(string(b))
		}
		if b, err := fs.ReadFile(fsys, dev+"/mem_info_vram_total"); err == nil {
			g.MemoryBytes, _ = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		}
		m.GPUs = append(m.GPUs, g)
	}
}

// llamaFeatures are the CPU flags worth reporting.
var llamaFeatures = []string{"avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
	"asimd", "asimddp", "sve", "i8mm", "neon", "vfpv4"}

// parseCPUInfo reads /proc/cpuinfo: processor count, model name, and the
// llama.cpp-relevant feature flags (x86 "flags", ARM "Features").
func parseCPUInfo(b []byte) (cpus int, model string, features []string) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	var flags string
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "processor":
			cpus++
		case "model name", "Model", "Hardware":
			if model == "" {
				model = v
			}
		case "flags", "Features":
			if flags == "" {
				flags = v
			}
		}
	}
	have := strings.Fields(flags)
	for _, f := range llamaFeatures {
		if slices.Contains(have, f) {
			features = append(features, f)
		}
	}
	return cpus, model, features
}

// parseMeminfo reads MemTotal and MemAvailable (kB) from /proc/meminfo.
func parseMeminfo(b []byte) (total, available int64) {
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil || n < 0 || n > 1<<50 {
			continue
		}
		switch k {
		case "MemTotal":
			total = n << 10
		case "MemAvailable":
			available = n << 10
		}
	}
	return total, available
}

// parseNvidiaSMI reads `nvidia-smi --query-gpu=name,memory.total
// --format=csv,noheader,nounits`: "NVIDIA H100 80GB HBM3, 81559" per line
// (MiB). Lines it cannot read are skipped.
func parseNvidiaSMI(b []byte) []GPU {
	var gpus []GPU
	for line := range strings.SplitSeq(string(b), "\n") {
		name, mem, ok := strings.Cut(strings.TrimSpace(line), ",")
		name = strings.TrimSpace(name)
		if !ok || name == "" || strings.HasPrefix(name, "No devices") {
			continue
		}
		g := GPU{Vendor: "nvidia", Name: name, Source: "nvidia-smi"}
		if mib, err := strconv.ParseInt(strings.TrimSpace(mem), 10, 64); err == nil && mib > 0 && mib < 1<<30 {
			g.MemoryBytes = mib << 20
		}
		gpus = append(gpus, g)
	}
	return gpus
}

// field returns the value after key on its line in b.
func field(b []byte, key string) string {
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), key); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
