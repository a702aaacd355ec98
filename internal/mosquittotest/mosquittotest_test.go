package mosquittotest_test

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/mcpd-project/mcpd/internal/mosquittotest"
)

func connect(t *testing.T, url, user, password string, tlsConf *tls.Config) (mqtt.Client, error) {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(url).SetUsername(user).SetPassword(password).
		SetClientID(user + "-" + t.Name()).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	if tlsConf != nil {
		o.SetTLSConfig(tlsConf)
	}
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("connect: no answer in 10 s")
	}
	if tok.Error() == nil {
		t.Cleanup(func() { c.Disconnect(100) })
	}
	return c, tok.Error()
}

func mustConnect(t *testing.T, url, user, password string) mqtt.Client {
	t.Helper()
	c, err := connect(t, url, user, password, nil)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	return c
}

func subscribe(t *testing.T, c mqtt.Client, filter string) (chan mqtt.Message, byte) {
	t.Helper()
	ch := make(chan mqtt.Message, 16)
	tok := c.Subscribe(filter, 0, func(_ mqtt.Client, m mqtt.Message) { ch <- m })
	if !tok.WaitTimeout(5 * time.Second) {
		t.Fatalf("subscribe %s: no SUBACK", filter)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	return ch, tok.(*mqtt.SubscribeToken).Result()[filter]
}

func publish(t *testing.T, c mqtt.Client, topic, payload string) {
	t.Helper()
	tok := c.Publish(topic, 0, false, payload)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// expect waits for the next message and checks it. That a message did not
// come is shown by one sent after it on the same path arriving first.
func expect(t *testing.T, ch chan mqtt.Message, topic, payload string) {
	t.Helper()
	select {
	case m := <-ch:
		if m.Topic() != topic || string(m.Payload()) != payload {
			t.Fatalf("got %s %q, want %s %q", m.Topic(), m.Payload(), topic, payload)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no message on %s", topic)
	}
}

// TestBrokerACL: devices reach only their own topics, the daemon's account
// reads every up topic (also through a shared subscription) and writes
// every down topic, and a wrong password is refused.
func TestBrokerACL(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{"dev-a", "dev-b"}})
	daemon := mustConnect(t, b.URL, mosquittotest.DaemonUser, b.Password(mosquittotest.DaemonUser))
	up, granted := subscribe(t, daemon, "$share/g/mcpd/v1/+/up/#")
	if granted != 0 {
		t.Fatalf("daemon's shared subscription: SUBACK %#x", granted)
	}
	a := mustConnect(t, b.URL, "dev-a", b.Password("dev-a"))
	down, granted := subscribe(t, a, "mcpd/v1/dev-a/down/#")
	if granted != 0 {
		t.Fatalf("dev-a's own down topic: SUBACK %#x", granted)
	}
	// mosquitto 2.0 grants any subscription and checks read access when
	// it delivers: dev-a never sees dev-b's messages.
	spy, _ := subscribe(t, a, "mcpd/v1/dev-b/down/#")

	// dev-a posing as dev-b is dropped by the broker; its own message,
	// sent after it, arrives first.
	publish(t, a, "mcpd/v1/dev-b/up", "forged")
	publish(t, a, "mcpd/v1/dev-a/up", "hello")
	expect(t, up, "mcpd/v1/dev-a/up", "hello")
	publish(t, a, "mcpd/v1/dev-a/up/instance-1", "sticky")
	expect(t, up, "mcpd/v1/dev-a/up/instance-1", "sticky")
	publish(t, daemon, "mcpd/v1/dev-a/down/instance-1", "welcome")
	expect(t, down, "mcpd/v1/dev-a/down/instance-1", "welcome")
	publish(t, daemon, "mcpd/v1/dev-a/down", "plain")
	expect(t, down, "mcpd/v1/dev-a/down", "plain")
	publish(t, daemon, "mcpd/v1/dev-b/down", "for b")
	publish(t, daemon, "mcpd/v1/dev-a/down", "after")
	expect(t, down, "mcpd/v1/dev-a/down", "after")
	select {
	case m := <-spy:
		t.Fatalf("dev-a read dev-b's %s %q", m.Topic(), m.Payload())
	default:
	}

	if _, err := connect(t, b.URL, "dev-a", "wrong", nil); err == nil {
		t.Fatal("a wrong password was accepted")
	} else if !strings.Contains(err.Error(), "not Authorized") && !strings.Contains(err.Error(), "bad user name or password") {
		t.Fatalf("wrong password: %v, want the broker's refusal", err)
	}
}

// TestBrokerTLS: the TLS listener takes a client with the test CA's
// certificate and refuses one without.
func TestBrokerTLS(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{TLS: true})
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
	pw := b.Password(mosquittotest.DaemonUser)
	if _, err := connect(t, b.TLSURL, mosquittotest.DaemonUser, pw, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}); err != nil {
		t.Fatalf("TLS with a client certificate: %v", err)
	}
	if _, err := connect(t, b.TLSURL, mosquittotest.DaemonUser, pw, &tls.Config{RootCAs: pool}); err == nil {
		t.Fatal("TLS without a client certificate was accepted")
	}
}

// TestBrokerRestart: after Restart the same URL serves again and nothing
// is remembered.
func TestBrokerRestart(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{"dev-a"}})
	c := mustConnect(t, b.URL, "dev-a", b.Password("dev-a"))
	b.Restart()
	deadline := time.Now().Add(5 * time.Second)
	for c.IsConnectionOpen() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if c.IsConnectionOpen() {
		t.Fatal("the client did not notice the restart")
	}
	mustConnect(t, b.URL, "dev-a", b.Password("dev-a"))
	if !strings.Contains(b.Log(), "running") {
		t.Fatalf("broker log lacks its start line:\n%s", b.Log())
	}
}
