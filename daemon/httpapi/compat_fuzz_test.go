package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon"
)

// wordDaemon answers every request with its last message's words, without
// a real daemon: the fuzz target exercises the request parsing and the
// answer formats, fast.
type wordDaemon struct{}

func (wordDaemon) Snapshot(context.Context) daemon.Snapshot {
	return daemon.Snapshot{State: "ready", Model: "echo-model"}
}

func (wordDaemon) Generate(_ context.Context, req daemon.LocalRequest, emit backends.Emit) (backends.Result, error) {
	text := req.Prompt
	if len(req.Messages) > 0 {
		text = req.Messages[len(req.Messages)-1].Content
	}
	var res backends.Result
	for _, w := range strings.SplitAfter(text, " ") {
		if w == "" {
			continue
		}
		if err := emit([]byte(w)); err != nil {
			return res, err
		}
		res.Tokens++
	}
	return res, nil
}

// FuzzCompatBodies sends arbitrary bodies to the Ollama and OpenAI
// endpoints: nothing panics, every answer has a status a client handles,
// and its body is well-formed in the endpoint's format (JSON, NDJSON
// lines, or SSE data lines of JSON).
func FuzzCompatBodies(f *testing.F) {
	for _, seed := range []string{
		`{"model":"echo-model","prompt":"hello there"}`,
		`{"model":"x","prompt":"hi","stream":false,"options":{"temperature":0,"num_predict":3,"seed":-1,"stop":["a"]}}`,
		`{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"u v"}]}`,
		`{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url"}]}],"stream":true}`,
		`{"messages":[{"role":"developer","content":"d"},{"role":"user","content":"q"}],"stop":"x","n":1,"seed":5}`,
		`{"messages":[],"max_tokens":-1}`, `{"options":{"num_ctx":"big"}}`, `[]`, `null`, `{`, ``,
	} {
		for ep := range 3 {
			f.Add(uint8(ep), []byte(seed))
		}
	}
	srv := New(Config{Daemon: wordDaemon{}, Version: "fuzz"})
	paths := []string{"/api/generate", "/api/chat", "/v1/chat/completions"}
	f.Fuzz(func(t *testing.T, ep uint8, body []byte) {
		path := paths[int(ep)%len(paths)]
		req := httptest.NewRequest(http.MethodPost, "http://127.0.0.1"+path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		switch rec.Code {
		case 200, 400, 404, 413, 429, 499, 502, 503, 504:
		default:
			t.Fatalf("%s %q: status %d", path, body, rec.Code)
		}
		out := rec.Body.Bytes()
		switch ct := rec.Header().Get("Content-Type"); {
		case strings.HasPrefix(ct, "text/event-stream"):
			sc := bufio.NewScanner(bytes.NewReader(out))
			for sc.Scan() {
				line := sc.Text()
				data, ok := strings.CutPrefix(line, "data: ")
				if line == "" || data == "[DONE]" {
					continue
				}
				if !ok || !json.Valid([]byte(data)) {
					t.Fatalf("%s %q: SSE line %q", path, body, line)
				}
			}
		case strings.HasPrefix(ct, "application/x-ndjson"), strings.HasPrefix(path, "/api/"):
			// NDJSON, and Ollama's errors too: its client reads line by line.
			for _, line := range bytes.Split(bytes.TrimSpace(out), []byte("\n")) {
				if !json.Valid(line) {
					t.Fatalf("%s %q: answer line %q", path, body, line)
				}
			}
		default:
			if !json.Valid(out) {
				t.Fatalf("%s %q: answer %q", path, body, out)
			}
		}
	})
}
