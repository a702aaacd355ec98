package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// TestEndToEndCache: with --cache, a device asking the same greedy
// question again gets the same bytes from the response cache, and /status
// and /metrics count the hits; without it, nothing is cached.
func TestEndToEndCache(t *testing.T) {
	model := tinyModel(t)
	const prompt = "Which bed needs water?"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	want := nativeAnswer(ctx, t, model, prompt, backends.Options{MaxTokens: 16, TemperatureSet: true})
	for _, tc := range []struct {
		name string
		args []string
		hits int64
	}{
		{"on", []string{"--cache", "--cache-mib", "1"}, 2},
		{"off", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, httpAddr := "127.0.0.1:"+freePort(t), freeTCP(t)
			logs, stop := runMcpd(ctx, t, append([]string{"--model", model, "--threads", "1", "--listen-udp", addr,
				"--http", httpAddr}, tc.args...), noEnv)
			defer stop()
			tr, err := device.DialUDP(addr)
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			c := device.New(tr, device.Config{DeviceID: "cache", MaxData: 48, Window: 2})
			helloUntilReady(ctx, c)
			for i := range 3 {
				var got bytes.Buffer
				m := &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptMaxTokens).With(serialproto.OptTemperature).With(serialproto.OptNewChat),
					MaxTokens: 16, Prompt: prompt}
				d, err := c.Ask(ctx, m, func(b []byte) error { got.Write(b); return nil })
				if err != nil {
					t.Fatalf("ask %d: %v\n%s", i, err, logs.String())
				}
				if !bytes.Equal(got.Bytes(), want) || d.Tokens != 16 {
					t.Fatalf("ask %d: %q (%d tokens), the engine alone: %q", i, got.Bytes(), d.Tokens, want)
				}
			}
			resp, err := http.Get("http://" + httpAddr + "/status")
			if err != nil {
				t.Fatal(err)
			}
			var status struct {
				Daemon struct {
					Cache *backends.CacheStats `json:"cache"`
				} `json:"daemon"`
			}
			err = json.NewDecoder(resp.Body).Decode(&status)
			resp.Body.Close()
			cs := status.Daemon.Cache
			if err != nil || cs == nil {
				t.Fatalf("/status: no cache section (%v)", err)
			}
			if cs.Hits != tc.hits || (tc.hits > 0 && (cs.Misses != 1 || cs.Entries != 1 || cs.Budget != 1<<20)) {
				t.Fatalf("/status cache: %+v", cs)
			}
			resp, err = http.Get("http://" + httpAddr + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			metrics, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if on := strings.Contains(string(metrics), `mcpd_response_cache_total{event="hit"} 2`); on != (tc.hits > 0) {
				t.Fatalf("metrics (cache %s):\n%s", tc.name, metrics)
			}
		})
	}
}
