package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// unitCommand returns the words of the unit's KEY= command line as systemd
// splits them: quotes group, and a word that is $MAINPID or contains
// ${MAINPID} gets the main PID (systemd.service(5), "Command lines").
func unitCommand(t *testing.T, unit, key, mainPID string) []string {
	t.Helper()
	data, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			line = v
		}
	}
	if line == "" {
		t.Fatalf("%s has no %s=", unit, key)
	}
	var words []string
	var cur strings.Builder
	quote, inWord := byte(0), false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			cur.WriteByte(c)
		case c == '\'' || c == '"':
			quote, inWord = c, true
		case c == ' ':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	for i, w := range words {
		if w == "$MAINPID" {
			words[i] = mainPID
		}
		words[i] = strings.ReplaceAll(words[i], "${MAINPID}", mainPID)
	}
	return words
}

// TestUnitReloadNeedsOnlyEssentials: `systemctl reload mcpd` must work on
// a minimal Debian, where /bin/kill (procps) is not installed: the
// packaged unit's ExecReload= may use only what every Debian system has
// (Essential packages) or this package, and run with nothing on PATH it
// must make the real mcpd reload.
func TestUnitReloadNeedsOnlyEssentials(t *testing.T) {
	unit := filepath.Join("..", "..", "systemd", "mcpd.service")
	allowed := map[string]string{
		"/bin/sh":         "dash, Essential",
		"/usr/bin/mcpd":   "this package",
		"/usr/bin/mcpctl": "this package",
	}
	words := unitCommand(t, unit, "ExecReload", "$MAINPID")
	if _, ok := allowed[words[0]]; !ok {
		t.Fatalf("ExecReload=%s: %s is not on a minimal Debian (allowed: /bin/sh and this package's commands)", strings.Join(words, " "), words[0])
	}
	if line := strings.Join(words, " "); strings.Contains(line, "bin/kill") {
		t.Fatalf("ExecReload=%s needs procps's kill", line)
	}

	bin := buildMcpd(t)
	notify := listenNotify(t)
	conf := filepath.Join(t.TempDir(), "mcpd.toml")
	// No model: the daemon starts at once, waiting for one.
	writeConfig(t, conf, "listen_udp = [\"127.0.0.1:"+freePort(t)+"\"]\nmodel = \"/nonexistent/model.gguf\"\n")
	p := startMcpd(t, []string{bin, "--config", conf}, "NOTIFY_SOCKET="+notify.path)
	notify.next(t, "READY=1", 30*time.Second)

	pid := strconv.Itoa(p.cmd.Process.Pid)
	words = unitCommand(t, unit, "ExecReload", pid)
	if words[0] == "/usr/bin/mcpd" {
		words[0] = bin
	}
	cmd := exec.Command(words[0], words[1:]...)
	// What systemd gives a control process, and nothing to find a kill
	// binary with.
	cmd.Env = []string{"MAINPID=" + pid, "PATH=/nonexistent"}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ExecReload %q: %v\n%s", words, err, out)
	}
	notify.next(t, "RELOADING=1", 10*time.Second)
	notify.next(t, "READY=1", 10*time.Second)
	p.waitLog(t, "configuration reloaded", 5*time.Second)
}

// The unit lets mcpd open every kind of serial port a gateway has — USB
// adapters and on-board UARTs (a Raspberry Pi's ttyAMA0/ttyS0 behind
// /dev/serial0) — by device class, and the udev example covers the same.
// Where this host has such a port, its class as the kernel names it in
// /proc/devices (which is what DeviceAllow=char-CLASS matches) is checked.
func TestUnitAllowsEverySerialClass(t *testing.T) {
	unit, err := os.ReadFile("../../systemd/mcpd.service")
	if err != nil {
		t.Fatal(err)
	}
	rules, err := os.ReadFile("../../systemd/60-mcpd-serial.rules")
	if err != nil {
		t.Fatal(err)
	}
	allowed := map[string]bool{}
	for _, l := range strings.Split(string(unit), "\n") {
		if v, ok := strings.CutPrefix(l, "DeviceAllow=char-"); ok {
			class, mode, _ := strings.Cut(v, " ")
			if mode != "rw" {
				t.Errorf("DeviceAllow=char-%s: mode %q, want rw", class, mode)
			}
			allowed[class] = true
		}
	}
	for _, tc := range []struct{ node, class string }{
		{"ttyUSB0", "ttyUSB"}, {"ttyACM0", "ttyACM"}, {"ttyAMA0", "ttyAMA"}, {"ttyS0", "ttyS"},
	} {
		if !allowed[tc.class] {
			t.Errorf("mcpd.service cannot open /dev/%s: no DeviceAllow=char-%s rw", tc.node, tc.class)
		}
	}
	for _, want := range []string{"ttyAMA[0-9]*", "ttyS[0-9]*", "serial0", "enable_uart=1"} {
		if !strings.Contains(string(rules), want) {
			t.Errorf("60-mcpd-serial.rules does not mention %s", want)
		}
	}
	// This host's own on-board UARTs, by the kernel's class names.
	devices, err := os.ReadFile("/proc/devices")
	if err != nil {
		t.Skip("no /proc/devices")
	}
	for _, l := range strings.Split(string(devices), "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && (strings.HasPrefix(f[1], "ttyS") || strings.HasPrefix(f[1], "ttyAMA")) && !allowed[f[1]] {
			t.Errorf("this host's serial class %s is not allowed by mcpd.service", f[1])
		}
	}
}
