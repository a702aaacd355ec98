package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/backends/ollama"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/internal/ollamatest"
	"github.com/mcpd-project/mcpd/serialproto"
)

// TestStatusCacheFigures: the extended STATUS_REPLY (protocol.md §11.11)
// over loopback UDP, from a daemon in front of the real engine selection
// with its response cache and the fake Ollama over HTTP: the response
// cache's misses and hits move as a device asks a greedy question and
// then the same again, and there is no KV_CACHE field (Ollama keeps its
// own cache, mcpd has none to count). A device that does not ask for
// STATUS_EXT, as every device before it, is not granted it and gets the
// basic layout, which a decoder of the basic layout alone reads.
func TestStatusCacheFigures(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := ollamatest.Start(t, ollamatest.Config{})
	sel, err := backends.Open(ctx, backends.OpenConfig{Policy: backends.PolicyOllama, ResponseCache: 1 << 20, Logger: testLogger(),
		Ollama: ollama.Starter(ollama.Config{Endpoints: []string{srv.URL()}, Model: "tiny"})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sel.Close() })
	d, err := New(Config{}, sel, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := runDaemon(t, d)

	c := dial(t, addr, device.Config{DeviceID: "new-device"})
	if c.Welcome().Features&serialproto.FeatureStatusExt == 0 {
		t.Fatalf("STATUS_EXT asked for and not granted: features %#x", c.Welcome().Features)
	}
	status := func() *serialproto.StatusReply {
		t.Helper()
		st, err := c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Extended || st.KV != nil || st.Responses == nil || st.Backend != "ollama" || st.Model != "tiny" {
			t.Fatalf("status: %+v (responses %+v)", st, st.Responses)
		}
		return st
	}
	ask := func() {
		t.Helper()
		m := &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptTemperature).With(serialproto.OptNewChat),
			Prompt: "Which bed needs water?"}
		if _, err := c.Ask(ctx, m, func([]byte) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	want := []serialproto.CacheFigures{{}, {Misses: 1}, {Hits: 1, Misses: 1}}
	for i, w := range want {
		if i > 0 {
			ask()
		}
		got := *status().Responses
		if got.Hits != w.Hits || got.Misses != w.Misses || got.Evictions != 0 || (i > 0) != (got.Bytes > 0) {
			t.Fatalf("after %d asks: response cache %+v, want hits %d misses %d", i, got, w.Hits, w.Misses)
		}
	}
	if n := srv.Chats(); n != 1 {
		t.Fatalf("the repeated question reached Ollama: %d chats", n)
	}

	// A device from before STATUS_EXT: not granted, and its reply, taken
	// off the wire, is read by the basic layout's rule alone.
	tr, err := device.DialUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	oc := device.New(tr, device.Config{DeviceID: "old-device", NoStatusExt: true})
	if err := oc.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	if oc.Welcome().Features&serialproto.FeatureStatusExt != 0 {
		t.Fatalf("STATUS_EXT granted unasked: features %#x", oc.Welcome().Features)
	}
	f := answer(t, tr, rawFrame(t, serialproto.Frame{Version: serialproto.Version1, Cmd: serialproto.CmdStatus, Seq: 9}), 9)
	b := f.Data
	if f.Cmd != serialproto.CmdStatusReply || len(b) < 4 || len(b) < 4+int(b[3]) ||
		string(b[4:4+b[3]]) != "ollama" || string(b[4+b[3]:]) != "tiny" || b[1] > 100 {
		t.Fatalf("old device's STATUS_REPLY %v: %x", f.Cmd, b)
	}
}
