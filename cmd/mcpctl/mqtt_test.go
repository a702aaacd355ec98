package main

import (
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/internal/mosquittotest"
)

// startMQTTDaemon runs a daemon with the word engine on a UDP port and on
// broker b; it returns the UDP address once the MQTT link is connected.
func startMQTTDaemon(t *testing.T, b *mosquittotest.Broker) string {
	t.Helper()
	d, err := daemon.New(daemon.Config{}, wordEngine{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	udp, err := daemon.ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	link, err := daemon.NewMQTTLink(daemon.MQTTConfig{URL: b.URL, Username: mosquittotest.DaemonUser, Password: b.Password(mosquittotest.DaemonUser)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx, udp, link); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(10 * time.Second)
	for !link.Connected() {
		if time.Now().After(deadline) {
			t.Fatal("the daemon did not connect to the broker")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return udp.Addr().String()
}

func brokerURL(b *mosquittotest.Broker, user string) string {
	u := url.URL{Scheme: "mqtt", Host: b.Addr(), User: url.UserPassword(user, b.Password(user))}
	return u.String()
}

// TestAskAndBenchOverMQTT: mcpctl ask and bench reach the daemon through
// a real mosquitto; bench runs the UDP and MQTT scenarios in one run.
func TestAskAndBenchOverMQTT(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{"kitchen"}})
	addr := startMQTTDaemon(t, b)
	out, errOut, err := runCmd(t, "", "ask", "--mqtt", brokerURL(b, "kitchen"), "--device-id", "kitchen", "--timeout", "10s", "one two three")
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	if out != "three two one \n" || !strings.Contains(errOut, "done: 3 tokens") {
		t.Fatalf("stdout %q stderr %q", out, errOut)
	}
	// Another device's account cannot speak for kitchen: the broker drops
	// its frames, and the daemon never answers.
	if _, _, err := runCmd(t, "", "ask", "--mqtt", brokerURL(b, "kitchen"), "--device-id", "garage", "--timeout", "2s", "x"); err == nil {
		t.Fatal("kitchen's account spoke as garage")
	}
	if _, _, err := runCmd(t, "", "ask", "--mqtt", "tcp://kitchen:wrong@"+b.Addr(), "--device-id", "kitchen", "--timeout", "5s", "x"); err == nil ||
		(!strings.Contains(err.Error(), "not Authorized") && !strings.Contains(err.Error(), "bad user name or password")) {
		t.Fatalf("wrong password: %v", err)
	}

	// bench: every device on the admin account (the bench's device ids have
	// no accounts of their own).
	out, errOut, err = runCmd(t, "", "bench", "--udp", addr, "--mqtt", brokerURL(b, mosquittotest.AdminUser),
		"--scenario", "single,mqtt-single,mqtt", "--devices", "3", "--duration", "10s", "--requests", "20", "--json")
	if err != nil {
		t.Fatalf("%v %s", err, errOut)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(rep.Scenarios) != 3 || rep.Scenarios[1].Transport != "mqtt" || rep.Scenarios[2].Devices != 3 {
		t.Fatalf("scenarios %+v", rep.Scenarios)
	}
	for _, s := range rep.Scenarios {
		if s.Requests != 20 || len(s.Errors) != 0 || s.TTFTp50 <= 0 {
			t.Fatalf("%s: %+v", s.Name, s)
		}
	}
	if strings.Contains(rep.Target, b.Password(mosquittotest.AdminUser)) {
		t.Fatalf("the report names the password: %s", rep.Target)
	}
	t.Logf("TTFT p50: udp %.2f ms, mqtt %.2f ms (shared box, word engine)", rep.Scenarios[0].TTFTp50, rep.Scenarios[1].TTFTp50)
}
