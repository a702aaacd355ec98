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
