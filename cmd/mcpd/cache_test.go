package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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
			// A second device asks for STATUS: the first's max_data 48
			// has room for one cache field only (§11.11).
			sc := connect(t, addr, "status")
			if st := deviceStatus(ctx, t, sc); st.KV == nil || st.KV.Hits+st.KV.Misses != 0 || (st.Responses != nil) != (tc.hits > 0) {
				t.Fatalf("STATUS before any request: kv %+v, responses %+v", st.KV, st.Responses)
			}
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
			// The device's STATUS (protocol.md §11.11): the response
			// cache's hits, and the engine's KV cache, which saw the one
			// request that ran with the cache on, all three without it —
			// the second and third finding their prompt evaluated.
			st := deviceStatus(ctx, t, sc)
			engineRuns := uint32(3 - tc.hits)
			if st.KV == nil || st.KV.Hits+st.KV.Misses != engineRuns || st.KV.Hits != engineRuns-1 {
				t.Fatalf("STATUS kv %+v after %d requests run by the engine", st.KV, engineRuns)
			}
			if tc.hits > 0 && (st.Responses == nil || st.Responses.Hits != uint32(tc.hits) || st.Responses.Misses != 1 || st.Responses.Bytes == 0) {
				t.Fatalf("STATUS responses %+v", st.Responses)
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
			if cs.KV.Hits != int64(st.KV.Hits) || cs.KV.Misses != int64(st.KV.Misses) {
				t.Fatalf("/status kv %+v, STATUS kv %+v", cs.KV, st.KV)
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
			if kv := fmt.Sprintf(`mcpd_kv_cache_total{event="hit"} %d`, st.KV.Hits); !strings.Contains(string(metrics), kv) {
				t.Fatalf("metrics (cache %s) without %s:\n%s", tc.name, kv, metrics)
			}
		})
	}
}

// deviceStatus asks for the daemon's STATUS, which must come in the
// extended layout.
func deviceStatus(ctx context.Context, t *testing.T, c *device.Client) *serialproto.StatusReply {
	t.Helper()
	st, err := c.Status(ctx)
	if err != nil || !st.Extended {
		t.Fatalf("STATUS: %+v, %v", st, err)
	}
	return st
}

// TestWarmRestartSIGTERM: mcpd under a service manager's STATE_DIRECTORY
// saves its engine's KV caches when SIGTERM stops it, and the next mcpd
// loads them: a chat client's next turn of an old conversation then finds
// its history in the cache (/status), with the answer a cold mcpd gives.
// A reload (SIGHUP) saves them too, while serving: a conversation held
// then survives a crash (SIGKILL) after it.
func TestWarmRestartSIGTERM(t *testing.T) {
	bin := buildMcpd(t)
	model := tinyModel(t)
	state := t.TempDir()
	warm := filepath.Join(state, WarmFileName)
	msgs := []map[string]string{{"role": "system", "content": "You are a greenhouse controller. Answer briefly."}}
	// turn asks mcpd at httpAddr for the conversation's next answer and
	// returns it with the prompt tokens found cached so far.
	var promptTokens int
	turn := func(httpAddr, user string) (string, int64) {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"model": "", "stream": false, "messages": append(msgs,
			map[string]string{"role": "user", "content": user}), "options": map[string]any{"temperature": 0, "num_predict": 8}})
		var resp *http.Response
		var err error
		for range 200 { // the model may still be loading
			if resp, err = http.Post("http://"+httpAddr+"/api/chat", "application/json", bytes.NewReader(body)); err == nil && resp.StatusCode == 200 {
				break
			}
			if resp != nil {
				resp.Body.Close()
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("/api/chat: %v %v", resp, err)
		}
		var out struct {
			Message         struct{ Content string } `json:"message"`
			PromptEvalCount int                      `json:"prompt_eval_count"`
		}
		err = json.NewDecoder(resp.Body).Decode(&out)
		promptTokens = out.PromptEvalCount
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		return out.Message.Content, kvPromptCached(t, httpAddr)
	}
	start := func(args ...string) (*mcpdProcess, string) {
		httpAddr := freeTCP(t)
		p := startMcpd(t, append([]string{bin, "--model", model, "--threads", "1", "--listen-udp", "127.0.0.1:" + freePort(t),
			"--http", httpAddr}, args...), "STATE_DIRECTORY="+state)
		return p, httpAddr
	}
	stop := func(p *mcpdProcess) { stopMcpd(t, p) }

	p, httpAddr := start()
	for _, user := range []string{"Which bed needs water?", "And the east bed?"} {
		answer, _ := turn(httpAddr, user)
		msgs = append(msgs, map[string]string{"role": "user", "content": user}, map[string]string{"role": "assistant", "content": answer})
	}
	stop(p)
	if !strings.Contains(p.logs.String(), "warm cache saved") {
		t.Fatalf("no 'warm cache saved' line:\n%s", p.logs.String())
	}
	if _, err := os.Stat(warm); err != nil {
		t.Fatal(err)
	}

	p, httpAddr = start()
	warmAnswer, cached := turn(httpAddr, "And the west bed?")
	stop(p)
	if !strings.Contains(p.logs.String(), "warm cache loaded") || cached == 0 {
		t.Fatalf("after a restart: %d prompt tokens cached\n%s", cached, p.logs.String())
	}

	p, httpAddr = start("--no-warm")
	coldAnswer, cached := turn(httpAddr, "And the west bed?")
	stop(p)
	if cached != 0 || warmAnswer != coldAnswer {
		t.Fatalf("--no-warm: %d prompt tokens cached, answer %q; warm: %q", cached, coldAnswer, warmAnswer)
	}

	// A new conversation, saved by a reload, survives a crash.
	msgs = []map[string]string{{"role": "system", "content": "You water plants. Say which bed and how much."}}
	p, httpAddr = start()
	answer, _ := turn(httpAddr, "The north bed is dry.")
	first := promptTokens
	msgs = append(msgs, map[string]string{"role": "user", "content": "The north bed is dry."}, map[string]string{"role": "assistant", "content": answer})
	saved := strings.Count(p.logs.String(), "warm cache saved")
	p.signal(t, syscall.SIGHUP)
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(p.logs.String(), "warm cache saved") == saved {
		if time.Now().After(deadline) {
			t.Fatalf("no 'warm cache saved' after SIGHUP:\n%s", p.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.signal(t, syscall.SIGKILL)
	p.wait(t, 30*time.Second)
	p, httpAddr = start()
	_, cached = turn(httpAddr, "And the south bed?")
	stop(p)
	if cached < int64(first)-1 {
		t.Fatalf("after a reload and a crash: %d prompt tokens cached, the conversation's first turn had %d\n%s",
			cached, first, p.logs.String())
	}
}

// kvPromptCached is the prompt tokens mcpd at httpAddr found in its
// engine's KV caches so far (/status).
func kvPromptCached(t *testing.T, httpAddr string) int64 {
	t.Helper()
	_, status := httpGet(t, "http://"+httpAddr+"/status")
	var st struct {
		Daemon struct {
			Cache *backends.CacheStats `json:"cache"`
		} `json:"daemon"`
	}
	if err := json.Unmarshal([]byte(status), &st); err != nil || st.Daemon.Cache == nil {
		t.Fatalf("/status: %v %s", err, status)
	}
	return st.Daemon.Cache.KV.PromptCached
}

// stopMcpd stops p with SIGTERM, as a service manager does, and fails the
// test unless it exits cleanly within 30 s.
func stopMcpd(t *testing.T, p *mcpdProcess) {
	t.Helper()
	p.signal(t, syscall.SIGTERM)
	if err := p.wait(t, 30*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.logs.String())
	}
}

// TestEngineSettingsIgnoreDaemonCache: a reload that changes only how
// often the state is saved or who may resume a conversation keeps the
// engine; the warm cache's own settings still need a new one.
func TestEngineSettingsIgnoreDaemonCache(t *testing.T) {
	base := defaultConfig()
	base.Model = "/models/m.gguf"
	for _, tc := range []struct {
		name string
		edit func(*config)
		same bool
	}{
		{"save_interval", func(c *config) { c.Cache.SaveInterval = &duration{time.Second} }, true},
		{"warm_save_interval", func(c *config) { c.Cache.WarmSaveInterval = &duration{time.Second} }, true},
		{"resume_unsigned", func(c *config) { c.Cache.ResumeUnsigned = true }, true},
		{"warm_mib", func(c *config) { c.Cache.WarmMiB = 8 }, false},
		{"no_warm", func(c *config) { c.Cache.NoWarm = true }, false},
	} {
		cfg := base
		tc.edit(&cfg)
		if same := engineSettings(cfg) == engineSettings(base); same != tc.same {
			t.Errorf("%s: same engine %v, want %v", tc.name, same, tc.same)
		}
	}
}
