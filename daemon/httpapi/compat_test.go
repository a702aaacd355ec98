package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/daemon"
	"github.com/ollama/ollama/api"
)

func ollamaClient(t *testing.T, f *fixture) *api.Client {
	t.Helper()
	u, err := url.Parse(f.http.URL)
	if err != nil {
		t.Fatal(err)
	}
	return api.NewClient(u, &http.Client{Timeout: 10 * time.Second})
}

// The official Ollama client, pointed at mcpd: /api/generate and
// /api/chat stream through the daemon's engine, with Ollama's fields.
func TestOllamaClient(t *testing.T) {
	f := start(t, daemon.Config{}, &echoEngine{})
	c := ollamaClient(t, f)
	ctx := context.Background()

	var text strings.Builder
	var last api.GenerateResponse
	err := c.Generate(ctx, &api.GenerateRequest{Model: "echo-model", Prompt: "hello over there", Options: map[string]any{"temperature": 0, "num_predict": 10}},
		func(r api.GenerateResponse) error { text.WriteString(r.Response); last = r; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if text.String() != "echo: hello over there" || !last.Done || last.DoneReason != "stop" || last.EvalCount != 4 || last.PromptEvalCount != 3 || last.Model != "echo-model" {
		t.Fatalf("generate: %q, last %+v", text.String(), last)
	}

	// Not streamed: one object with the whole answer.
	no := false
	var whole []api.GenerateResponse
	if err := c.Generate(ctx, &api.GenerateRequest{Model: "echo-model", Prompt: "in one piece", Stream: &no},
		func(r api.GenerateResponse) error { whole = append(whole, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(whole) != 1 || whole[0].Response != "echo: in one piece" || !whole[0].Done {
		t.Fatalf("stream false: %+v", whole)
	}

	// A chat: the last user message is answered, the history goes along.
	text.Reset()
	var lastChat api.ChatResponse
	err = c.Chat(ctx, &api.ChatRequest{Model: "echo-model", Messages: []api.Message{
		{Role: "system", Content: "be brief"}, {Role: "user", Content: "first"}, {Role: "assistant", Content: "echo: first"}, {Role: "user", Content: "second turn"},
	}}, func(r api.ChatResponse) error { text.WriteString(r.Message.Content); lastChat = r; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if text.String() != "echo: second turn" || !lastChat.Done || lastChat.Message.Role != "assistant" || lastChat.EvalCount != 3 {
		t.Fatalf("chat: %q, last %+v", text.String(), lastChat)
	}

	// The model list and the version answer as Ollama's do.
	list, err := c.List(ctx)
	if err != nil || len(list.Models) != 1 || list.Models[0].Name != "echo-model" {
		t.Fatalf("list: %v %+v", err, list)
	}
	if v, err := c.Version(ctx); err != nil || !strings.Contains(v, "mcpd") {
		t.Fatalf("version: %v %q", err, v)
	}
	if n := f.d.Stats().Done.Load(); n != 3 {
		t.Fatalf("the daemon counted %d requests done, want 3", n)
	}
}

// The compatible endpoints share the daemon's slots and queue: with one
// slot busy and no queue, an Ollama request is BUSY (429: this client is
// at its share; 503 when the whole queue is full — the official client
// reports either as a StatusError) and so is an OpenAI one.
func TestCompatSharesTheQueue(t *testing.T) {
	e := &echoEngine{gate: make(chan struct{})}
	f := start(t, daemon.Config{MaxConcurrent: 1, MaxQueue: -1}, e)
	c := ollamaClient(t, f)
	held := make(chan error, 1)
	go func() {
		held <- c.Generate(context.Background(), &api.GenerateRequest{Model: "echo-model", Prompt: "hold"}, func(api.GenerateResponse) error { return nil })
	}()
	waitFor(t, func() bool { return f.d.Snapshot(context.Background()).Running == 1 })

	err := c.Chat(context.Background(), &api.ChatRequest{Model: "echo-model", Messages: []api.Message{{Role: "user", Content: "me too"}}},
		func(api.ChatResponse) error { return nil })
	var se api.StatusError
	if !errors.As(err, &se) || se.StatusCode != http.StatusTooManyRequests || !strings.Contains(se.ErrorMessage, "BUSY") {
		t.Fatalf("chat while busy: %v", err)
	}
	resp, err := http.Post(f.http.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"echo-model","messages":[{"role":"user","content":"me too"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Error struct{ Message, Type, Code string } `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || body.Error.Code != "BUSY" || body.Error.Type != "rate_limit_exceeded" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("OpenAI request while busy: %d %+v", resp.StatusCode, body)
	}
	close(e.gate)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
}

// An OpenAI-style chat completion, streamed as server-sent events and
// whole.
func TestOpenAIChatCompletions(t *testing.T) {
	f := start(t, daemon.Config{}, &echoEngine{})
	post := func(body string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, f.http.URL+"/v1/chat/completions", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer sk-anything") // tools send one; mcpd ignores it
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	resp := post(`{"model":"echo-model","stream":true,"max_tokens":50,"temperature":0.2,
		"messages":[{"role":"developer","content":"be brief"},{"role":"user","content":[{"type":"text","text":"stream "},{"type":"text","text":"this please"}]}]}`)
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var text strings.Builder
	var finish string
	var events, roles int
	sawDone := false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Fatalf("not an SSE data line: %q", line)
		}
		if data == "[DONE]" {
			sawDone = true
			continue
		}
		var ev struct {
			Object  string `json:"object"`
			Choices []struct {
				Delta        struct{ Role, Content string } `json:"delta"`
				FinishReason *string                        `json:"finish_reason"`
			} `json:"choices"`
			Usage *struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		if err := json.Unmarshal([]byte(data), &ev); err != nil || ev.Object != "chat.completion.chunk" || len(ev.Choices) != 1 {
			t.Fatalf("event %q: %v", data, err)
		}
		events++
		if ev.Choices[0].Delta.Role == "assistant" {
			roles++
		}
		text.WriteString(ev.Choices[0].Delta.Content)
		if ev.Choices[0].FinishReason != nil {
			finish = *ev.Choices[0].FinishReason
			if ev.Usage == nil || ev.Usage.CompletionTokens != 4 {
				t.Fatalf("last chunk's usage: %q", data)
			}
		}
	}
	if text.String() != "echo: stream this please" || finish != "stop" || !sawDone || roles != 1 || events != 5 {
		t.Fatalf("stream: %q finish %q done %v roles %d events %d", text.String(), finish, sawDone, roles, events)
	}

	resp2 := post(`{"model":"echo-model","max_tokens":2,"messages":[{"role":"user","content":"cut me short please"}]}`)
	defer resp2.Body.Close()
	var whole struct {
		Object  string `json:"object"`
		Choices []struct {
			Message      struct{ Role, Content string } `json:"message"`
			FinishReason string                         `json:"finish_reason"`
		} `json:"choices"`
		Usage struct{ PromptTokens, CompletionTokens, TotalTokens int } `json:"usage"`
	}
	if err := json.NewDecoder(resp2.Body).Decode(&whole); err != nil {
		t.Fatal(err)
	}
	if whole.Object != "chat.completion" || len(whole.Choices) != 1 || whole.Choices[0].Message.Content != "echo: cut " ||
		whole.Choices[0].FinishReason != "length" || whole.Choices[0].Message.Role != "assistant" {
		t.Fatalf("whole: %+v", whole)
	}

	// Bad requests are answered in OpenAI's error shape.
	for _, body := range []string{`{"messages":[]}`, `{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}`,
		`{"messages":[{"role":"wizard","content":"x"}]}`, `{"n":2,"messages":[{"role":"user","content":"x"}]}`, `not json`} {
		r := post(body)
		var e struct {
			Error struct{ Message, Type, Code string } `json:"error"`
		}
		_ = json.NewDecoder(r.Body).Decode(&e)
		r.Body.Close()
		if r.StatusCode != 400 || e.Error.Type != "invalid_request_error" || e.Error.Message == "" {
			t.Errorf("%s: %d %+v", body, r.StatusCode, e)
		}
	}
}

// TestGuardRefusalsAreOneLine: the guard's refusals are one line of JSON
// in the asked API's error shape. The official Ollama client, naming the
// API by a host it may not use (a DNS-rebinding name), gets a clean
// StatusError carrying the reason — a multi-line body read line by line
// gave it "{" as the error.
func TestGuardRefusalsAreOneLine(t *testing.T) {
	f := start(t, daemon.Config{}, &echoEngine{})
	addr := f.http.Listener.Addr().String()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse("http://rebound.example:" + port)
	if err != nil {
		t.Fatal(err)
	}
	var dialer net.Dialer
	c := api.NewClient(u, &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, addr)
		},
	}})
	ctx := context.Background()
	wantRefusal := func(what string, err error) {
		t.Helper()
		var se api.StatusError
		if !errors.As(err, &se) || se.StatusCode != http.StatusMisdirectedRequest || se.ErrorMessage != "FORBIDDEN: host not allowed: name this API by a loopback address or a configured host" {
			t.Errorf("%s through a foreign host: %#v", what, err)
		}
	}
	wantRefusal("generate", c.Generate(ctx, &api.GenerateRequest{Model: "echo-model", Prompt: "hi"}, func(api.GenerateResponse) error { return nil }))
	wantRefusal("chat", c.Chat(ctx, &api.ChatRequest{Model: "echo-model", Messages: []api.Message{{Role: "user", Content: "hi"}}}, func(api.ChatResponse) error { return nil }))
	_, err = c.List(ctx)
	wantRefusal("list", err)

	// A form POST (which a page may send cross-origin) to each API: one
	// line, in that API's shape.
	for _, tc := range []struct {
		path string
		ok   func(body []byte) bool
	}{
		{"/api/generate", func(b []byte) bool {
			var v struct{ Error string }
			return json.Unmarshal(b, &v) == nil && v.Error == "FORBIDDEN: Content-Type must be application/json"
		}},
		{"/v1/chat/completions", func(b []byte) bool {
			var v struct {
				Error struct{ Message, Type, Code string }
			}
			return json.Unmarshal(b, &v) == nil && v.Error.Code == "FORBIDDEN" && v.Error.Message == "Content-Type must be application/json" && v.Error.Type == "invalid_request_error"
		}},
		{"/v1/generate", func(b []byte) bool {
			var v GenerateLine
			return json.Unmarshal(b, &v) == nil && v.Error != nil && v.Error.Code == "FORBIDDEN" && v.Error.Message == "Content-Type must be application/json"
		}},
	} {
		resp, err := http.Post(f.http.URL+tc.path, "application/x-www-form-urlencoded", strings.NewReader("prompt=hi"))
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusUnsupportedMediaType || bytes.Count(body, []byte("\n")) != 1 || body[len(body)-1] != '\n' || !tc.ok(body) {
			t.Errorf("form POST to %s: %d %q", tc.path, resp.StatusCode, body)
		}
	}
}
