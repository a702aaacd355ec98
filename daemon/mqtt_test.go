package daemon

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/internal/mosquittotest"
	"github.com/mcpd-project/mcpd/serialproto"
)

// logBuffer collects a daemon's log for assertions on what it says.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func slogTo(w *logBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func linkReconnects(d *Daemon, name string) int64 {
	for _, l := range d.Stats().Links() {
		if l.Link == name {
			return l.Reconnects
		}
	}
	return 0
}

// daemonMQTT is the daemon's broker account on b.
func daemonMQTT(b *mosquittotest.Broker) MQTTConfig {
	return MQTTConfig{URL: b.URL, Username: mosquittotest.DaemonUser, Password: b.Password(mosquittotest.DaemonUser)}
}

// startMQTTDaemon runs d on a UDP port and the MQTT link mc; it waits until
// the link is connected when wait is set. stop ends the daemon early.
func startMQTTDaemon(t *testing.T, d *Daemon, mc MQTTConfig, wait bool) (link *MQTTLink, udpAddr string, stop func()) {
	t.Helper()
	link, err := NewMQTTLink(mc, d.log)
	if err != nil {
		t.Fatal(err)
	}
	link.SetBackoff(50*time.Millisecond, 500*time.Millisecond)
	udp, err := ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stop = runLinks(t, d, udp, link)
	if wait {
		waitFor(t, link.Connected)
	}
	return link, udp.Addr().String(), stop
}

// dialMQTT connects device id to b with its own account.
func dialMQTT(t *testing.T, b *mosquittotest.Broker, id string) *device.MQTT {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := device.DialMQTT(ctx, device.MQTTConfig{URL: b.URL, DeviceID: id, Username: id, Password: b.Password(id)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func helloOver(t *testing.T, tr device.Transport, cfg device.Config) *device.Client {
	t.Helper()
	c := device.New(tr, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Hello(ctx); err != nil {
		t.Fatalf("HELLO over MQTT: %v", err)
	}
	return c
}

func TestAskOverMQTT(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{"dev-short", "dev-utf8", "dev-frag", "dev-signed"}})
	key, err := serialproto.NewKey(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	e := &testEngine{}
	d, err := New(Config{DefaultMaxTokens: 10000, Keys: map[string]serialproto.Key{"dev-signed": key}}, e, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	link, _, _ := startMQTTDaemon(t, d, daemonMQTT(b), true)
	for _, tc := range []struct {
		name    string
		id      string
		maxData uint16
		window  uint8
		key     serialproto.Key
		prompt  string
	}{
		{"short", "dev-short", 256, 4, serialproto.Key{}, "What is the soil moisture?"},
		{"utf8", "dev-utf8", 32, 1, serialproto.Key{}, "Grüße 🌱 — how are the tomatoes? " + strings.Repeat("ä€🌍", 20)},
		{"fragmented 4 KiB prompt", "dev-frag", 64, 2, serialproto.Key{}, strings.Repeat("a long sensor log line; ", 170)},
		{"signed", "dev-signed", 256, 4, key, "Signed over the broker?"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := helloOver(t, dialMQTT(t, b, tc.id), device.Config{DeviceID: tc.id, MaxData: tc.maxData, Window: tc.window, Key: tc.key, LinkID: 1})
			for range 2 { // the session carries on
				text, done, err := ask(t, c, tc.prompt)
				if err != nil {
					t.Fatal(err)
				}
				if text != answerFor(tc.prompt) || done.Reason != serialproto.StopEOS || done.Tokens == 0 {
					t.Fatalf("answer %q, DONE %+v", text, done)
				}
			}
		})
	}
	if got := d.Stats().Done.Load(); got != 8 {
		t.Fatalf("done %d, want 8", got)
	}
	snap := d.Snapshot(context.Background())
	for _, s := range snap.Sessions {
		if s.Link != link.Name() || !strings.HasPrefix(s.Peer, link.Name()+"|dev-") {
			t.Fatalf("session %+v not on %s", s, link.Name())
		}
	}
}

// TestMQTTHelloMustNameTheTopicsDevice: dev-a may publish only on its own
// topic (the broker's ACL), and the daemon refuses a HELLO there that
// names another device, so no device opens a session as another.
func TestMQTTHelloMustNameTheTopicsDevice(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{"dev-a"}})
	d, err := New(Config{}, &testEngine{}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	startMQTTDaemon(t, d, daemonMQTT(b), true)
	c := device.New(dialMQTT(t, b, "dev-a"), device.Config{DeviceID: "dev-b", Retries: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var perr *serialproto.Error
	if err := c.Hello(ctx); !errors.As(err, &perr) || perr.Code != serialproto.CodeForbidden {
		t.Fatalf("HELLO as dev-b on dev-a's topic: %v, want FORBIDDEN", err)
	}
	if n := d.Stats().Sessions.Load(); n != 0 {
		t.Fatalf("%d sessions opened", n)
	}
}

// TestMQTTTLS: the daemon and a device reach the broker's TLS listener,
// which requires a client certificate, with the configured CA and
// certificate files; a CA that is not the broker's fails clearly.
func TestMQTTTLS(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{"dev-tls"}, TLS: true})
	d, err := New(Config{}, &testEngine{}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	mc := daemonMQTT(b)
	mc.URL, mc.CAFile, mc.CertFile, mc.KeyFile = strings.Replace(b.TLSURL, "ssl://", "mqtts://", 1), b.CAFile, b.CertFile, b.KeyFile
	startMQTTDaemon(t, d, mc, true)

	pemCA, err := os.ReadFile(b.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemCA)
	cert, err := tls.LoadX509KeyPair(b.CertFile, b.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := device.DialMQTT(ctx, device.MQTTConfig{URL: b.TLSURL, DeviceID: "dev-tls", Username: "dev-tls", Password: b.Password("dev-tls"),
		TLS: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	c := helloOver(t, m, device.Config{DeviceID: "dev-tls"})
	if text, _, err := ask(t, c, "over TLS"); err != nil || text != answerFor("over TLS") {
		t.Fatalf("ask over TLS: %q %v", text, err)
	}

	// A client certificate without its key, and a CA file with no
	// certificate, are refused before anything connects.
	bad := mc
	bad.KeyFile = ""
	if _, err := NewMQTTLink(bad, nil); err == nil || !strings.Contains(err.Error(), "key_file") {
		t.Fatalf("cert without key: %v", err)
	}
	bad = mc
	bad.CAFile = b.KeyFile
	if _, err := NewMQTTLink(bad, nil); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("CA file without a certificate: %v", err)
	}
}

// TestMQTTWrongCredentials: a refused password is logged with the
// broker's reason and retried with backoff; the daemon serves its other
// links meanwhile. A broker that is not there yet is waited for.
func TestMQTTWrongCredentials(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{})
	var logs logBuffer
	d, err := New(Config{}, &testEngine{}, slogTo(&logs))
	if err != nil {
		t.Fatal(err)
	}
	mc := daemonMQTT(b)
	mc.Password = "wrong"
	link, udpAddr, _ := startMQTTDaemon(t, d, mc, false)
	waitFor(t, func() bool { return strings.Count(logs.String(), "mqtt: cannot connect") >= 3 })
	out := logs.String()
	if !strings.Contains(out, "not Authorized") && !strings.Contains(out, "bad user name or password") {
		t.Fatalf("the log does not say the broker refused the credentials:\n%s", out)
	}
	if n := strings.Count(out, "level=ERROR msg=\"mqtt: cannot connect"); n != 1 {
		t.Fatalf("%d ERROR lines for one cause, want 1 (the retries at DEBUG):\n%s", n, out)
	}
	if strings.Contains(out, "wrong") {
		t.Fatalf("the password reached the log:\n%s", out)
	}
	st := link.LinkStates()
	if len(st) != 1 || st[0].Up || !strings.HasPrefix(st[0].Error, "the broker refused the account") || !strings.Contains(st[0].Hint, "password") {
		t.Fatalf("link state %+v", st)
	}
	if link.Connected() {
		t.Fatal("connected with a wrong password")
	}
	// UDP still answers.
	c := dial(t, udpAddr, device.Config{DeviceID: "udp-dev"})
	if text, _, err := ask(t, c, "still here?"); err != nil || text != answerFor("still here?") {
		t.Fatalf("UDP while MQTT is refused: %q %v", text, err)
	}

	// No broker at first: the daemon connects once it comes up.
	b.Stop()
	d2, err := New(Config{}, &testEngine{}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	link2, _, _ := startMQTTDaemon(t, d2, daemonMQTT(b), false)
	time.Sleep(300 * time.Millisecond)
	if link2.Connected() {
		t.Fatal("connected to a stopped broker")
	}
	if st := link2.LinkStates(); st[0].Up || st[0].Error != "connection refused" {
		t.Fatalf("link state with no broker: %+v", st)
	}
	b.Restart()
	waitFor(t, link2.Connected)
	if st := link2.LinkStates(); !st[0].Up || st[0].Error != "" {
		t.Fatalf("link state once connected: %+v", st)
	}
}

// TestMQTTBrokerRestartKeepsSessions: the broker restarts in the middle of
// an answer. The daemon reconnects, the device too, and the answer is
// delivered whole over the same session, whose next request needs no new
// HELLO.
func TestMQTTBrokerRestartKeepsSessions(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{"dev-a"}})
	e := &testEngine{delay: 20 * time.Millisecond}
	d, err := New(Config{DefaultMaxTokens: 10000}, e, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	link, _, _ := startMQTTDaemon(t, d, daemonMQTT(b), true)
	c := helloOver(t, dialMQTT(t, b, "dev-a"), device.Config{DeviceID: "dev-a"})
	prompt := strings.Repeat("word ", 60)
	var once sync.Once
	restarted := make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var text strings.Builder
	done, err := c.Ask(ctx, &serialproto.Infer{Prompt: prompt}, func(p []byte) error {
		text.Write(p)
		once.Do(func() { go func() { b.Restart(); close(restarted) }() })
		return nil
	})
	if err != nil {
		t.Fatalf("ask across a broker restart: %v", err)
	}
	<-restarted
	if text.String() != answerFor(prompt) || done.Reason != serialproto.StopEOS {
		t.Fatalf("answer across the restart: %q, DONE %+v", text.String(), done)
	}
	if n := linkReconnects(d, link.Name()); n < 1 {
		t.Fatalf("link reconnects %d, want ≥ 1", n)
	}
	if got, _, err := ask(t, c, "after"); err != nil || got != answerFor("after") {
		t.Fatalf("same session after the restart: %q %v", got, err)
	}
	if n := d.Stats().Sessions.Load(); n != 1 {
		t.Fatalf("%d sessions, want the one that survived", n)
	}
}

// TestMQTTBadInput: garbage, oversize payloads, bad device ids in topics
// and frames on a topic the daemon does not serve reach it while a device
// streams an answer: each is counted and dropped without an answer (a
// broker account may be shared or stolen; nothing is sent to it), and the
// device's answer is exact.
func TestMQTTBadInput(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{"dev-a", "dev-victim"}})
	e := &testEngine{delay: 5 * time.Millisecond}
	d, err := New(Config{DefaultMaxTokens: 10000}, e, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	startMQTTDaemon(t, d, daemonMQTT(b), true)
	c := helloOver(t, dialMQTT(t, b, "dev-a"), device.Config{DeviceID: "dev-a"})

	// The attacker holds the admin account: it can publish anywhere, and
	// watches every down topic for answers to its garbage.
	o := mqtt.NewClientOptions().AddBroker(b.URL).SetClientID("attacker").
		SetUsername(mosquittotest.AdminUser).SetPassword(b.Password(mosquittotest.AdminUser))
	adm := mqtt.NewClient(o)
	if tok := adm.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("admin connect: %v", tok.Error())
	}
	defer adm.Disconnect(100)
	hello, err := serialproto.AppendFrame(nil, serialproto.Frame{Version: 1, Cmd: serialproto.CmdHello, Seq: 1, Data: []byte{1}})
	if err != nil {
		t.Fatal(err)
	}
	answers := make(chan string, 64)
	if tok := adm.Subscribe("mcpd/v1/+/down/#", 0, func(_ mqtt.Client, m mqtt.Message) {
		// The attacker's own frame on a down topic comes back to it.
		own := m.Topic() == "mcpd/v1/dev-victim/down" && bytes.Equal(m.Payload(), hello)
		if !own && !strings.HasPrefix(m.Topic(), "mcpd/v1/dev-a/") {
			answers <- m.Topic()
		}
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	garbage := []struct {
		topic   string
		payload []byte
		counted bool // reaches the daemon, which counts it as a bad frame
	}{
		{"mcpd/v1/dev-victim/up", []byte("not a frame"), true},
		{"mcpd/v1/dev-victim/up", nil, true},
		{"mcpd/v1/dev-victim/up", bytes.Repeat([]byte{0x55}, 100_000), true},                              // oversize
		{"mcpd/v1/dev-victim/up", append(append([]byte(nil), hello...), hello...), true},                  // two frames in one message
		{"mcpd/v1/bad id!/up", hello, true},                                                               // no valid device id
		{"mcpd/v1/" + strings.Repeat("x", 200) + "/up", hello, true},                                      // too long an id
		{"mcpd/v1//up", hello, true},                                                                      // empty id
		{"mcpd/v1/dev-victim/up/some-instance", hello, false},                                             // not subscribed without a group
		{"mcpd/v2/dev-victim/up", hello, false},                                                           // another version's topic
		{"mcpd/v1/dev-victim/down", hello, false},                                                         // the wrong direction
		{"mcpd/v1/dev-victim/up", hello[:len(hello)-1], true},                                             // cut short
		{"mcpd/v1/dev-victim/up", append(hello[:len(hello)-1:len(hello)-1], hello[len(hello)-1]^1), true}, // bad CRC
	}
	want := int64(0)
	for _, g := range garbage {
		if g.counted {
			want++
		}
	}
	before := d.Stats().BadFrames.Load()
	prompt := strings.Repeat("steady ", 80)
	var text strings.Builder
	var once sync.Once
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done, err := c.Ask(ctx, &serialproto.Infer{Prompt: prompt}, func(p []byte) error {
		text.Write(p)
		once.Do(func() {
			for range 3 {
				for _, g := range garbage {
					adm.Publish(g.topic, 0, false, g.payload).Wait()
				}
			}
		})
		return nil
	})
	if err != nil || text.String() != answerFor(prompt) || done.Reason != serialproto.StopEOS {
		t.Fatalf("the device's answer amid garbage: %q %+v %v", text.String(), done, err)
	}
	waitFor(t, func() bool { return d.Stats().BadFrames.Load()-before >= 3*want })
	time.Sleep(100 * time.Millisecond) // anything more would be counted by now
	if got := d.Stats().BadFrames.Load() - before; got != 3*want {
		t.Fatalf("bad frames counted %d, want %d", got, 3*want)
	}
	select {
	case topic := <-answers:
		t.Fatalf("the daemon answered garbage on %s", topic)
	default:
	}
	if got, _, err := ask(t, c, "after"); err != nil || got != answerFor("after") {
		t.Fatalf("after the garbage: %q %v", got, err)
	}
}

func TestMQTTConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  MQTTConfig
		want string // part of the error; "" valid
	}{
		{"tcp", MQTTConfig{URL: "tcp://127.0.0.1:1883"}, ""},
		{"mqtt with user", MQTTConfig{URL: "mqtt://u:p@broker:1883", Group: "g", QoS: 1}, ""},
		{"tls with files", MQTTConfig{URL: "mqtts://broker:8883", CAFile: "ca.pem", CertFile: "c.pem", KeyFile: "k.pem"}, ""},
		{"no port", MQTTConfig{URL: "tcp://broker"}, "host:port"},
		{"http", MQTTConfig{URL: "http://broker:80"}, "scheme"},
		{"path", MQTTConfig{URL: "tcp://broker:1883/x"}, "no path"},
		{"qos 2", MQTTConfig{URL: "tcp://b:1", QoS: 2}, "qos"},
		{"group wildcard", MQTTConfig{URL: "tcp://b:1", Group: "a+b"}, "group"},
		{"group slash", MQTTConfig{URL: "tcp://b:1", Group: "a/b"}, "group"},
		{"instance $", MQTTConfig{URL: "tcp://b:1", Instance: "$sys"}, "instance"},
		{"ca on plain tcp", MQTTConfig{URL: "tcp://b:1", CAFile: "ca.pem"}, "TLS URL"},
		{"cert without key", MQTTConfig{URL: "ssl://b:1", CertFile: "c.pem"}, "key_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate: %v, want %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), ":p@") {
				t.Fatalf("the password is in the error: %v", err)
			}
		})
	}
}

// FuzzMQTTTopic: any topic either names a valid device on one of the
// link's up topics, or is refused; nothing panics.
func FuzzMQTTTopic(f *testing.F) {
	for _, s := range []string{"mcpd/v1/dev-a/up", "mcpd/v1/dev-a/up/inst-1", "mcpd/v1//up", "mcpd/v1/a/down", "mcpd/v1/a/up/", "mcpd/v1/a/up/inst-1/x", "", "mcpd/v1/"} {
		f.Add(s)
	}
	plain, err := NewMQTTLink(MQTTConfig{URL: "tcp://127.0.0.1:1"}, nil)
	if err != nil {
		f.Fatal(err)
	}
	group, err := NewMQTTLink(MQTTConfig{URL: "tcp://127.0.0.1:1", Group: "g", Instance: "inst-1"}, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		for _, l := range []*MQTTLink{plain, group} {
			id, ok := l.deviceOf(topic)
			if !ok {
				continue
			}
			if !serialproto.ValidDeviceID(id) {
				t.Fatalf("%q → invalid id %q", topic, id)
			}
			if topic != "mcpd/v1/"+id+"/up" && topic != "mcpd/v1/"+id+"/up/"+l.Instance() {
				t.Fatalf("%q accepted as %q", topic, id)
			}
			if topic != "mcpd/v1/"+id+"/up" && l == plain {
				t.Fatalf("%q accepted without a group", topic)
			}
		}
	})
}

// TestMQTTQoS1: with QoS 1 on both sides (the broker acknowledges every
// message and resends unacknowledged ones) the exchange is the same.
func TestMQTTQoS1(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{"dev-q1"}})
	d, err := New(Config{DefaultMaxTokens: 10000}, &testEngine{}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	mc := daemonMQTT(b)
	mc.QoS = 1
	startMQTTDaemon(t, d, mc, true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := device.DialMQTT(ctx, device.MQTTConfig{URL: b.URL, DeviceID: "dev-q1", Username: "dev-q1", Password: b.Password("dev-q1"), QoS: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	c := helloOver(t, m, device.Config{DeviceID: "dev-q1"})
	t0 := time.Now()
	defer func() { t.Logf("ask took %v", time.Since(t0)) }()
	prompt := strings.Repeat("qos one ", 40)
	if text, done, err := ask(t, c, prompt); err != nil || text != answerFor(prompt) || done.Reason != serialproto.StopEOS {
		t.Fatalf("ask at QoS 1: %q %+v %v", text, done, err)
	}
}

// BenchmarkTTFTUDPvsMQTT: one daemon and engine serve a device over UDP and
// a device through a real mosquitto on loopback; their requests alternate,
// so both see the same box at the same moment. Reported: each link's time
// to first token (p50, p99) and what the broker adds to the p50.
func BenchmarkTTFTUDPvsMQTT(b *testing.B) {
	br := mosquittotest.Start(b, mosquittotest.Options{Devices: []string{"bench-mqtt"}})
	d, err := New(Config{PeerRate: -1}, &testEngine{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	link, err := NewMQTTLink(daemonMQTT(br), nil)
	if err != nil {
		b.Fatal(err)
	}
	udp, err := ListenUDP("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, udp, link) }()
	b.Cleanup(func() { cancel(); <-done })
	for deadline := time.Now().Add(10 * time.Second); !link.Connected(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("no broker connection")
		}
	}
	ut, err := device.DialUDP(udp.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer ut.Close()
	mt, err := device.DialMQTT(ctx, device.MQTTConfig{URL: br.URL, DeviceID: "bench-mqtt", Username: "bench-mqtt", Password: br.Password("bench-mqtt")})
	if err != nil {
		b.Fatal(err)
	}
	defer mt.Close()
	clients := map[string]*device.Client{
		"udp":  device.New(ut, device.Config{DeviceID: "bench-udp"}),
		"mqtt": device.New(mt, device.Config{DeviceID: "bench-mqtt"}),
	}
	for _, c := range clients {
		if err := c.Hello(ctx); err != nil {
			b.Fatal(err)
		}
	}
	ttft := map[string][]time.Duration{}
	m := &serialproto.Infer{Prompt: "soil 31 %, air 24.5 °C"}
	for b.Loop() {
		for _, name := range []string{"udp", "mqtt"} {
			t0 := time.Now()
			var first time.Duration
			if _, err := clients[name].Ask(ctx, m, func([]byte) error {
				if first == 0 {
					first = time.Since(t0)
				}
				return nil
			}); err != nil {
				b.Fatalf("%s: %v", name, err)
			}
			ttft[name] = append(ttft[name], first)
		}
	}
	u50, u99 := percentiles(ttft["udp"])
	m50, m99 := percentiles(ttft["mqtt"])
	b.ReportMetric(u50, "udp-ttft-p50-µs")
	b.ReportMetric(u99, "udp-ttft-p99-µs")
	b.ReportMetric(m50, "mqtt-ttft-p50-µs")
	b.ReportMetric(m99, "mqtt-ttft-p99-µs")
	b.ReportMetric(m50-u50, "added-p50-µs")
	b.ReportMetric(0, "ns/op")
}

// TestMQTTGroupTakesOverAGoneInstance: when the broker publishes an
// instance's will ("gone"), the group's other instances share its up
// topics and answer a device still addressing it with NO_SESSION, so the
// device re-HELLOs at once instead of waiting out its retransmissions;
// once the instance says "up" again they let its topics go.
func TestMQTTGroupTakesOverAGoneInstance(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{"dev-a"}})
	d, err := New(Config{}, &testEngine{}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	mc := daemonMQTT(b)
	mc.Group, mc.Instance = "hall", "inst-b"
	startMQTTDaemon(t, d, mc, true)

	adm := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL).SetClientID("admin-" + t.Name()).
		SetUsername(mosquittotest.AdminUser).SetPassword(b.Password(mosquittotest.AdminUser)))
	if tok := adm.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("admin: %v", tok.Error())
	}
	defer adm.Disconnect(100)
	answers := make(chan mqtt.Message, 16)
	if tok := adm.Subscribe("mcpd/v1/dev-a/down/#", 0, func(_ mqtt.Client, m mqtt.Message) { answers <- m }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	ping, err := serialproto.AppendFrame(nil, serialproto.Frame{Version: 1, Cmd: serialproto.CmdPing, Seq: 9})
	if err != nil {
		t.Fatal(err)
	}
	// askGone sends a PING to inst-a's topic and reports whether inst-b
	// answered it (with NO_SESSION) within wait.
	askGone := func(wait time.Duration) bool {
		adm.Publish("mcpd/v1/dev-a/up/inst-a", 0, false, ping).Wait()
		select {
		case m := <-answers:
			f, err := serialproto.Decode(m.Payload())
			if err != nil || m.Topic() != "mcpd/v1/dev-a/down/inst-b" || f.Cmd != serialproto.CmdError {
				t.Fatalf("answer %s %v %v", m.Topic(), f, err)
			}
			if e := errorOf(t, f); e.Code != serialproto.CodeNoSession {
				t.Fatalf("answer %v, want NO_SESSION", e)
			}
			return true
		case <-time.After(wait):
			return false
		}
	}
	if askGone(200 * time.Millisecond) {
		t.Fatal("inst-b answered for inst-a while inst-a was up")
	}
	adm.Publish("mcpd/groups/hall/inst-a", 1, false, "gone").Wait()
	deadline := time.Now().Add(5 * time.Second)
	for !askGone(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("inst-b never answered for the gone inst-a")
		}
	}
	adm.Publish("mcpd/groups/hall/inst-a", 1, false, "up").Wait()
	time.Sleep(200 * time.Millisecond) // the UNSUBSCRIBE is not waited for
	for len(answers) > 0 {
		<-answers
	}
	if askGone(300 * time.Millisecond) {
		t.Fatal("inst-b still answered for inst-a after it came back")
	}
}
