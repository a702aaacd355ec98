package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// mcpd.service sets MemoryDenyWriteExecute=yes. That holds only if neither
// Go nor llama.cpp (ggml's CPU kernels) ever maps memory writable and
// executable or makes memory executable later. This test runs the real
// binary under the kernel's own form of that rule, PR_SET_MDWE (Linux ≥
// 6.3), and has it load a model and answer: a violation would fail the
// mmap/mprotect and end mcpd (Go aborts on a failed runtime mapping).

const (
	mdweChildEnv  = "MCPD_TEST_MDWE_EXEC"   // argv, separated by \x1f, to exec under MDWE
	mdweReportEnv = "MCPD_TEST_MDWE_REPORT" // print PR_GET_MDWE and exit
)

// mdweExec, in the re-executed test binary, turns MDWE on for this
// process and becomes the program named in the environment; MDWE survives
// execve.
func mdweExec() {
	argv := strings.Split(os.Getenv(mdweChildEnv), "\x1f")
	if err := unix.Prctl(unix.PR_SET_MDWE, unix.PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0); err != nil {
		os.Stderr.WriteString("PR_SET_MDWE: " + err.Error() + "\n")
		os.Exit(3)
	}
	env := make([]string, 0, len(os.Environ()))
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, mdweChildEnv+"=") {
			env = append(env, e)
		}
	}
	err := syscall.Exec(argv[0], argv, env)
	os.Stderr.WriteString("exec: " + err.Error() + "\n")
	os.Exit(4)
}

func TestMain(m *testing.M) {
	if os.Getenv(mdweChildEnv) != "" {
		mdweExec()
	}
	if os.Getenv(mdweReportEnv) != "" {
		v, err := unix.PrctlRetInt(unix.PR_GET_MDWE, 0, 0, 0, 0)
		os.Stdout.WriteString("mdwe=" + strconv.Itoa(v) + " " + fmt.Sprint(err) + "\n")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestMemoryDenyWriteExecute(t *testing.T) {
	// Does this kernel know MDWE, and does it survive execve? A throwaway
	// process sets it and execs this test binary, which reports it.
	probe := startMcpd(t, []string{os.Args[0], "-test.run=^$"},
		mdweChildEnv+"="+os.Args[0]+"\x1f-test.run=^$", mdweReportEnv+"=1")
	if err := probe.wait(t, 10*time.Second); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) && exit.ExitCode() == 3 {
			t.Skipf("the kernel has no PR_SET_MDWE: %s", probe.logs.String())
		}
		t.Fatalf("probe: %v %s", err, probe.logs.String())
	}
	if got := probe.logs.String(); !strings.Contains(got, "mdwe=1 <nil>") {
		t.Fatalf("MDWE after execve: %q, want mdwe=1", got)
	}

	bin := buildMcpd(t)
	model := tinyModel(t)
	notify := listenNotify(t)
	addr := "127.0.0.1:" + freePort(t)
	conf := filepath.Join(t.TempDir(), "mcpd.toml")
	writeConfig(t, conf, "listen_udp = [\""+addr+"\"]\nmodel = \""+model+"\"\n[engine]\nthreads = 2\n")
	p := startMcpd(t, []string{os.Args[0], "-test.run=^$"},
		mdweChildEnv+"="+strings.Join([]string{bin, "--config", conf}, "\x1f"), "NOTIFY_SOCKET="+notify.path)
	notify.next(t, "READY=1", 60*time.Second)
	if status, err := os.ReadFile("/proc/" + strconv.Itoa(p.cmd.Process.Pid) + "/status"); err == nil && !strings.Contains(string(status), "Name:\tmcpd") {
		t.Fatalf("the process is not mcpd:\n%s", status)
	}
	c := connect(t, addr, "mdwe")
	if text, done, err := askDevice(c, "Which bed needs water?", 16, 30*time.Second); err != nil || done.Tokens != 16 || text == "" {
		t.Fatalf("inference under MDWE: %q %+v %v", text, done, err)
	}
	p.signal(t, syscall.SIGTERM)
	if err := p.wait(t, 15*time.Second); err != nil {
		t.Fatalf("mcpd under MDWE: %v", err)
	}
}
