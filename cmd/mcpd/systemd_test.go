package main

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// These tests run the real mcpd binary, built here, as systemd would: with
// NOTIFY_SOCKET pointing at a unixgram socket the test reads, WATCHDOG_USEC,
// signals, and (TestSocketActivation) a socket passed by
// systemd-socket-activate. The engine is the real llama.cpp one on a
// generated model; the watchdog and drain tests use a build with
// -tags mcpdfault, whose engine can be told to hang or to slow down
// (fault_on.go).

func buildMcpd(t *testing.T, tags ...string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "mcpd")
	args := []string{"build", "-o", bin}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// notifyListener is the service manager's end of NOTIFY_SOCKET.
type notifyListener struct {
	path string
	msgs chan string

	mu  sync.Mutex
	all []string
}

func listenNotify(t *testing.T) *notifyListener {
	t.Helper()
	// A short path: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "mcpd-notify")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	n := &notifyListener{path: filepath.Join(dir, "n"), msgs: make(chan string, 1024)}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				close(n.msgs)
				return
			}
			m := string(buf[:k])
			n.mu.Lock()
			n.all = append(n.all, m)
			n.mu.Unlock()
			n.msgs <- m
		}
	}()
	return n
}

// next returns the next message starting with prefix, skipping others.
func (n *notifyListener) next(t *testing.T, prefix string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m, ok := <-n.msgs:
			if !ok {
				t.Fatalf("notify socket closed waiting for %q", prefix)
			}
			if strings.HasPrefix(m, prefix) {
				return m
			}
		case <-deadline:
			t.Fatalf("no %q notification within %v; got %q", prefix, timeout, n.history())
		}
	}
}

// count drains messages for d and counts those equal to msg.
func (n *notifyListener) count(msg string, d time.Duration) int {
	k := 0
	deadline := time.After(d)
	for {
		select {
		case m := <-n.msgs:
			if m == msg {
				k++
			}
		case <-deadline:
			return k
		}
	}
}

func (n *notifyListener) history() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.all)
}

// kinds is the sequence of state changes notified, without WATCHDOG=1 and
// bare STATUS= lines.
func (n *notifyListener) kinds() []string {
	var out []string
	for _, m := range n.history() {
		first, _, _ := strings.Cut(m, "\n")
		if first == "WATCHDOG=1" || strings.HasPrefix(first, "STATUS=") {
			continue
		}
		out = append(out, first)
	}
	return out
}

type mcpdProcess struct {
	cmd    *exec.Cmd
	logs   *syncBuffer
	exited chan error
}

func startMcpd(t *testing.T, argv []string, env ...string) *mcpdProcess {
	t.Helper()
	p := &mcpdProcess{cmd: exec.Command(argv[0], argv[1:]...), logs: &syncBuffer{}, exited: make(chan error, 1)}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("mcpd output:\n%s", p.logs.String())
		}
	})
	return p
}

func (p *mcpdProcess) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

func (p *mcpdProcess) waitLog(t *testing.T, substr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.logs.String(), substr) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in mcpd's log within %v", substr, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *mcpdProcess) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-p.exited:
		p.exited <- err // for the cleanup
		return err
	case <-time.After(timeout):
		t.Fatalf("mcpd did not exit within %v", timeout)
		return nil
	}
}

// writeConfig writes a configuration with the HTTP endpoint off: its
// default port would collide between tests running at once.
func writeConfig(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text+"\n[http]\nlisten = \"off\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// connect opens a session from a device, retrying while the daemon comes up.
func connect(t *testing.T, addr, id string) *device.Client {
	t.Helper()
	tr, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	c := device.New(tr, device.Config{DeviceID: id, MaxData: 128, Window: 4})
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		err := c.Hello(ctx)
		cancel()
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("HELLO to %s: %v", addr, err)
		}
	}
}

func askDevice(c *device.Client, prompt string, maxTokens uint16, timeout time.Duration) (string, *serialproto.Done, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	m := &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptMaxTokens).With(serialproto.OptTemperature), MaxTokens: maxTokens, Prompt: prompt}
	var text strings.Builder
	done, err := c.Ask(ctx, m, func(b []byte) error { text.Write(b); return nil })
	return text.String(), done, err
}

func pingDevice(c *device.Client, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := c.Ping(ctx)
	return err
}

func protoCode(err error) serialproto.ErrorCode {
	var e *serialproto.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// TestSystemdLifecycle: READY only once serving, STATUS lines, watchdog
// pings, SIGHUP reloads that add and remove a UDP address and change
// limits without dropping the session on the address that stays, an
// invalid configuration rejected with the old one still in force, and
// SIGTERM → STOPPING=1 and exit 0; in that order on the notify socket.
func TestSystemdLifecycle(t *testing.T) {
	bin := buildMcpd(t)
	model := tinyModel(t)
	notify := listenNotify(t)
	addrA, addrB := "127.0.0.1:"+freePort(t), "127.0.0.1:"+freePort(t)
	conf := filepath.Join(t.TempDir(), "mcpd.toml")
	base := "model = \"" + model + "\"\n[engine]\nthreads = 1\n[limits]\nshutdown_drain = \"2s\"\n"
	writeConfig(t, conf, "listen_udp = [\""+addrA+"\"]\n"+base)

	p := startMcpd(t, []string{bin, "--config", conf}, "NOTIFY_SOCKET="+notify.path, "WATCHDOG_USEC=400000")
	loading := notify.next(t, "STATUS=loading model", 30*time.Second)
	if !strings.Contains(loading, "tiny.gguf") {
		t.Fatalf("loading status %q", loading)
	}
	ready := notify.next(t, "READY=1", 60*time.Second)
	if !strings.Contains(ready, "STATUS=serving: backend llama.cpp, model tiny.gguf; 1 links") {
		t.Fatalf("READY status %q", ready)
	}
	// READY came after the socket was bound: a device gets in at once.
	a := connect(t, addrA, "stays")
	if text, done, err := askDevice(a, "Which bed needs water?", 8, 30*time.Second); err != nil || done.Tokens != 8 || text == "" {
		t.Fatalf("ask: %q %+v %v", text, done, err)
	}
	if got := notify.count("WATCHDOG=1", time.Second); got < 3 {
		t.Fatalf("%d watchdog pings in 1 s at WATCHDOG_USEC=400ms", got)
	}

	// Reload: a second UDP address, another session limit, and another
	// thread count, which takes a new engine.
	base2 := strings.Replace(base, "threads = 1", "threads = 2", 1)
	writeConfig(t, conf, "listen_udp = [\""+addrA+"\", \""+addrB+"\"]\n"+base2+"max_sessions = 2\n")
	hup := time.Now()
	p.signal(t, syscall.SIGHUP)
	reloading := notify.next(t, "RELOADING=1", 10*time.Second)
	if !strings.Contains(reloading, "\nMONOTONIC_USEC=") {
		t.Fatalf("RELOADING without MONOTONIC_USEC: %q", reloading)
	}
	if ready := notify.next(t, "READY=1", 10*time.Second); !strings.Contains(ready, "2 links; 1 sessions") {
		t.Fatalf("READY after reload: %q", ready)
	}
	t.Logf("SIGHUP → READY %v (a UDP address added, a new engine loaded)", time.Since(hup).Round(time.Millisecond))
	if err := pingDevice(a, 3*time.Second); err != nil {
		t.Fatalf("the session on the address that stayed: %v", err)
	}
	p.waitLog(t, "engine_reloaded=true", 5*time.Second)
	p.waitLog(t, "threads=2", 5*time.Second)
	if _, done, err := askDevice(a, "And now?", 8, 30*time.Second); err != nil || done.Tokens != 8 {
		t.Fatalf("ask on the new engine in the old session: %+v %v", done, err)
	}
	b := connect(t, addrB, "added")
	if _, _, err := askDevice(b, "Hello there", 4, 30*time.Second); err != nil {
		t.Fatalf("ask on the added address: %v", err)
	}
	// max_sessions = 2 is in force.
	tr, err := device.DialUDP(addrB)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	err = device.New(tr, device.Config{DeviceID: "third"}).Hello(ctx)
	cancel()
	if protoCode(err) != serialproto.CodeBusy {
		t.Fatalf("a third device after max_sessions = 2: %v, want BUSY", err)
	}

	// An invalid configuration: rejected, loudly; everything stays.
	writeConfig(t, conf, "listen_udp = [\""+addrA+"\"]\nmodle = \"typo\"\n"+base)
	p.signal(t, syscall.SIGHUP)
	notify.next(t, "RELOADING=1", 10*time.Second)
	ready = notify.next(t, "READY=1", 10*time.Second)
	p.waitLog(t, "reload rejected; the running configuration stays in force", 5*time.Second)
	if !strings.Contains(p.logs.String(), "unknown keys: modle") || !strings.Contains(ready, "2 links") || !strings.Contains(ready, "last error:") {
		t.Fatalf("after an invalid reload: READY %q", ready)
	}
	if err := pingDevice(b, 3*time.Second); err != nil {
		t.Fatalf("the added address after a rejected reload: %v", err)
	}

	// Removing the second address closes only its session.
	writeConfig(t, conf, "listen_udp = [\""+addrA+"\"]\n"+base)
	p.signal(t, syscall.SIGHUP)
	notify.next(t, "RELOADING=1", 10*time.Second)
	if ready := notify.next(t, "READY=1", 10*time.Second); !strings.Contains(ready, "1 links; 1 sessions") {
		t.Fatalf("READY after removing an address: %q", ready)
	}
	if err := pingDevice(b, 500*time.Millisecond); err == nil {
		t.Fatal("the removed address still answers")
	}
	if err := pingDevice(a, 3*time.Second); err != nil {
		t.Fatalf("the session on the address that stayed, after the removal: %v", err)
	}

	p.signal(t, syscall.SIGTERM)
	notify.next(t, "STOPPING=1", 10*time.Second)
	if err := p.wait(t, 15*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	t.Logf("notifications: %q", notify.history())
	t.Logf("mcpd log:\n%s", p.logs.String())
	want := []string{"READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1", "STOPPING=1"}
	if got := notify.kinds(); !slices.Equal(got, want) {
		t.Fatalf("notifications %q, want %q", got, want)
	}
}

// TestWatchdogStopsWhenTheEngineHangs: the watchdog is fed while the
// daemon works, and no longer once an engine call hangs (a test build's
// engine blocks, deaf to cancellation, on a marked prompt): systemd would
// kill and restart the unit. SIGTERM still ends the process cleanly.
func TestWatchdogStopsWhenTheEngineHangs(t *testing.T) {
	bin := buildMcpd(t, "mcpdfault")
	model := tinyModel(t)
	notify := listenNotify(t)
	addr := "127.0.0.1:" + freePort(t)
	conf := filepath.Join(t.TempDir(), "mcpd.toml")
	writeConfig(t, conf, "listen_udp = [\""+addr+"\"]\nmodel = \""+model+"\"\n[engine]\nthreads = 1\n"+
		"[limits]\nengine_stall = \"1s\"\nshutdown_drain = \"1s\"\n")
	p := startMcpd(t, []string{bin, "--config", conf}, "NOTIFY_SOCKET="+notify.path, "WATCHDOG_USEC=1000000")
	notify.next(t, "READY=1", 60*time.Second)
	c := connect(t, addr, "hang")
	if _, _, err := askDevice(c, "a normal question", 8, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := notify.count("WATCHDOG=1", 2*time.Second); got < 3 {
		t.Fatalf("%d pings in 2 s at WATCHDOG_USEC=1s while working", got)
	}

	// The device hears nothing more: its Ask ends when the test closes it.
	hang := time.Now()
	go func() { _, _, _ = askDevice(c, "MCPD-FAULT-HANG", 8, 20*time.Second) }()
	p.waitLog(t, "watchdog: not pinging", 10*time.Second)
	t.Logf("pings held %v after the hung request was sent (engine_stall 1s, checked every 500ms)", time.Since(hang).Round(time.Millisecond))
	if !strings.Contains(p.logs.String(), "engine call(s) without output") {
		t.Fatalf("the log does not say what is stuck")
	}
	// A ping decided just before may still be in flight; after that, none.
	notify.count("WATCHDOG=1", 200*time.Millisecond)
	if got := notify.count("WATCHDOG=1", 3*time.Second); got != 0 {
		t.Fatalf("%d watchdog pings in 3 s with the engine hung (systemd would never restart it)", got)
	}
	sigterm := time.Now()
	p.signal(t, syscall.SIGTERM)
	notify.next(t, "STOPPING=1", 5*time.Second)
	if err := p.wait(t, 15*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM with a hung engine: %v", err)
	}
	t.Logf("SIGTERM → exit %v with a hung engine call (drain 1s)", time.Since(sigterm).Round(time.Millisecond))
}

// TestDrainOnSIGTERM: SIGTERM → STOPPING=1; a request that can finish
// within shutdown_drain gets its DONE, one that cannot gets ERROR
// SHUTTING_DOWN at the deadline, a new one is refused, and mcpd exits 0.
// The test build slows the real engine to 100 ms per piece on a marked
// prompt so that the requests are caught in flight.
func TestDrainOnSIGTERM(t *testing.T) {
	bin := buildMcpd(t, "mcpdfault")
	model := tinyModel(t)
	notify := listenNotify(t)
	addr := "127.0.0.1:" + freePort(t)
	conf := filepath.Join(t.TempDir(), "mcpd.toml")
	const drain = 1500 * time.Millisecond
	writeConfig(t, conf, "listen_udp = [\""+addr+"\"]\nmodel = \""+model+"\"\n[engine]\nthreads = 1\n"+
		"[limits]\nshutdown_drain = \""+drain.String()+"\"\n")
	p := startMcpd(t, []string{bin, "--config", conf}, "NOTIFY_SOCKET="+notify.path)
	notify.next(t, "READY=1", 60*time.Second)
	short, long := connect(t, addr, "short"), connect(t, addr, "long")

	type result struct {
		text string
		done *serialproto.Done
		err  error
	}
	shortRes, longRes := make(chan result, 1), make(chan result, 1)
	go func() { // 5 pieces: ~0.5 s
		text, done, err := askDevice(short, "MCPD-FAULT-SLOW short", 5, 20*time.Second)
		shortRes <- result{text, done, err}
	}()
	go func() { // 100 pieces: ~10 s, well past the drain
		text, done, err := askDevice(long, "MCPD-FAULT-SLOW long", 100, 20*time.Second)
		longRes <- result{text, done, err}
	}()
	time.Sleep(200 * time.Millisecond) // both accepted and generating
	sigterm := time.Now()
	p.signal(t, syscall.SIGTERM)
	if stopping := notify.next(t, "STOPPING=1", 5*time.Second); !strings.Contains(stopping, "draining 2 requests") {
		t.Fatalf("STOPPING status %q", stopping)
	}
	// A newcomer is refused while draining.
	late := func() error {
		tr, err := device.DialUDP(addr)
		if err != nil {
			return err
		}
		defer tr.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return device.New(tr, device.Config{DeviceID: "late"}).Hello(ctx)
	}()
	if protoCode(late) != serialproto.CodeShuttingDown {
		t.Fatalf("HELLO while draining: %v, want SHUTTING_DOWN", late)
	}
	s := <-shortRes
	if s.err != nil || s.done == nil || s.done.Tokens != 5 {
		t.Fatalf("the short request during the drain: %+v", s)
	}
	l := <-longRes
	ended := time.Since(sigterm)
	if protoCode(l.err) != serialproto.CodeShuttingDown {
		t.Fatalf("the long request: %+v, want ERROR SHUTTING_DOWN", l)
	}
	if ended < drain {
		t.Fatalf("the long request ended %v after SIGTERM, before the %v drain", ended, drain)
	}
	if err := p.wait(t, 10*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	t.Logf("SIGTERM → long request's ERROR %v, → exit %v (drain %v); the short one got %d tokens of %q",
		ended.Round(time.Millisecond), time.Since(sigterm).Round(time.Millisecond), drain, s.done.Tokens, s.text)
}

// TestSocketActivation: systemd-socket-activate binds a UDP socket and
// hands it to the real mcpd on the first datagram; a device talks through
// it, and the configured listen_udp address is not opened.
func TestSocketActivation(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		if os.Getenv("MCPD_REQUIRE_SYSTEMD") == "1" {
			t.Fatal("systemd-socket-activate not found (Debian package systemd)")
		}
		t.Skip("systemd-socket-activate not found (Debian package systemd)")
	}
	bin := buildMcpd(t)
	model := tinyModel(t)
	notify := listenNotify(t)
	activated, configured := "127.0.0.1:"+freePort(t), "127.0.0.1:"+freePort(t)
	conf := filepath.Join(t.TempDir(), "mcpd.toml")
	writeConfig(t, conf, "listen_udp = [\""+configured+"\"]\nmodel = \""+model+"\"\n[engine]\nthreads = 1\n")
	p := startMcpd(t, []string{activate, "--datagram", "-l", activated, "--fdname=mcpd-udp",
		"-E", "NOTIFY_SOCKET=" + notify.path, bin, "--config", conf})
	p.waitLog(t, "Listening on", 10*time.Second) // systemd-socket-activate is ready; mcpd starts on the first datagram

	c := connect(t, activated, "activated") // its first HELLO starts mcpd, which then reads it
	text, done, err := askDevice(c, "Which bed needs water?", 8, 30*time.Second)
	if err != nil || done.Tokens != 8 || text == "" {
		t.Fatalf("ask through the passed socket: %q %+v %v", text, done, err)
	}
	notify.next(t, "READY=1", 10*time.Second)
	p.waitLog(t, "socket activation: serving the UDP sockets systemd passed", 5*time.Second)
	// The configured address is free: mcpd did not bind it.
	if l, err := net.ListenPacket("udp", configured); err != nil {
		t.Fatalf("mcpd bound listen_udp despite socket activation: %v", err)
	} else {
		l.Close()
	}
	p.signal(t, syscall.SIGTERM)
	notify.next(t, "STOPPING=1", 5*time.Second)
	if err := p.wait(t, 15*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}
