package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/serialproto"
)

// OpenAI's chat completions (/v1/chat/completions, /v1/models) on the
// devices' queue and limits; runCompat in compat.go does the serving.

// ChatCompletionRequest is the part of OpenAI's request mcpd honours.
type ChatCompletionRequest struct {
	Model    string `json:"model"`
	Messages []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"` // a string, or parts of which only text is taken
	} `json:"messages"`
	Stream              bool            `json:"stream"`
	MaxTokens           int             `json:"max_tokens"`
	MaxCompletionTokens int             `json:"max_completion_tokens"`
	Temperature         *float32        `json:"temperature"`
	TopP                float32         `json:"top_p"`
	Seed                *int64          `json:"seed"`
	Stop                json.RawMessage `json:"stop"` // a string or a list
	N                   int             `json:"n"`
}

// openAIText reads a message's content: a string, or an array of parts of
// which the "text" ones are joined.
func openAIText(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", errors.New("content must be a string or a list of text parts")
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type != "text" {
			return "", fmt.Errorf("content part %q is not supported by mcpd (text only)", p.Type)
		}
		b.WriteString(p.Text)
	}
	return b.String(), nil
}

func openAIStop(raw json.RawMessage) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, errors.New("stop must be a string or a list of strings")
	}
	return list, nil
}

func openAIError(w http.ResponseWriter, status int, code serialproto.ErrorCode, msg string) {
	retryAfter(w, status)
	writeCompact(w, status, map[string]any{"error": map[string]any{"message": msg, "type": openAIErrorType(status), "code": code.String()}})
}

func openAIErrorType(status int) string {
	switch {
	case status == http.StatusTooManyRequests:
		return "rate_limit_exceeded"
	case status == http.StatusNotFound:
		return "not_found_error"
	case status >= 500:
		return "server_error"
	}
	return "invalid_request_error"
}

func openAIFinish(res backends.Result) string {
	if res.Stop == backends.StopLength || res.Stop == backends.StopContext {
		return "length"
	}
	return "stop"
}

func sse(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	return append(append([]byte("data: "), b...), '\n', '\n'), err
}

func (s *Server) openAIChat(w http.ResponseWriter, r *http.Request) {
	var req ChatCompletionRequest
	if err := decodeCompat(w, r, &req); err != nil {
		openAIError(w, http.StatusBadRequest, serialproto.CodeMalformed, "request body: "+err.Error())
		return
	}
	roles, contents := make([]string, len(req.Messages)), make([]string, len(req.Messages))
	for i, m := range req.Messages {
		text, err := openAIText(m.Content)
		if err != nil {
			openAIError(w, http.StatusBadRequest, serialproto.CodeUnsupportedOption, fmt.Sprintf("message %d: %v", i, err))
			return
		}
		role := m.Role
		if role == "developer" { // OpenAI's newer name for system
			role = "system"
		}
		roles[i], contents[i] = role, text
	}
	msgs, err := chatMessages(roles, contents)
	if err == nil && req.N > 1 {
		err = errors.New("n > 1 is not supported by mcpd")
	}
	stop, serr := openAIStop(req.Stop)
	if err == nil {
		err = serr
	}
	if err == nil && (req.MaxTokens < 0 || req.MaxCompletionTokens < 0 || req.TopP < 0) {
		err = errors.New("max_tokens and top_p must not be negative")
	}
	if err != nil {
		openAIError(w, http.StatusBadRequest, serialproto.CodeMalformed, err.Error())
		return
	}
	opts := backends.Options{MaxTokens: req.MaxTokens, TopP: req.TopP, Stop: stop}
	if req.MaxCompletionTokens > 0 {
		opts.MaxTokens = req.MaxCompletionTokens
	}
	if req.Temperature != nil {
		opts.Temperature, opts.TemperatureSet = *req.Temperature, true
	}
	if req.Seed != nil && *req.Seed >= 0 {
		opts.Seed, opts.SeedSet = uint32(*req.Seed), true
	}
	id := fmt.Sprintf("chatcmpl-mcpd-%d", time.Now().UnixNano())
	created := time.Now().Unix()
	model := req.Model
	if model == "" {
		model = s.cfg.Daemon.Snapshot(r.Context()).Model
	}
	chunk := func(delta map[string]string, finish *string) map[string]any {
		return map[string]any{"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
			"choices": []map[string]any{{"index": 0, "delta": delta, "finish_reason": finish}}}
	}
	usage := func(res backends.Result) map[string]int {
		return map[string]int{"prompt_tokens": res.PromptTokens, "completion_tokens": res.Tokens, "total_tokens": res.PromptTokens + res.Tokens}
	}
	s.runCompat(w, r, daemon.LocalRequest{Model: s.modelFor(r.Context(), req.Model), Messages: msgs, Options: opts}, req.Stream, flavor{
		contentType: "text/event-stream",
		piece: func(text string, first bool) ([]byte, error) {
			delta := map[string]string{"content": text}
			if first {
				delta["role"] = "assistant"
			}
			return sse(chunk(delta, nil))
		},
		done: func(res backends.Result) ([]byte, error) {
			finish := openAIFinish(res)
			last := chunk(map[string]string{}, &finish)
			last["usage"] = usage(res)
			b, err := sse(last)
			return append(b, "data: [DONE]\n\n"...), err
		},
		fail: func(code serialproto.ErrorCode, msg string) []byte {
			b, _ := sse(map[string]any{"error": map[string]any{"message": msg, "type": "server_error", "code": code.String()}})
			return b
		},
		refuse: openAIError,
		whole: func(text string, res backends.Result) any {
			return map[string]any{"id": id, "object": "chat.completion", "created": created, "model": model,
				"choices": []map[string]any{{"index": 0, "message": map[string]string{"role": "assistant", "content": text},
					"finish_reason": openAIFinish(res)}},
				"usage": usage(res)}
		},
	})
}

// openAIModels lists the model mcpd serves, as /v1/models does.
func (s *Server) openAIModels(w http.ResponseWriter, r *http.Request) {
	snap := s.cfg.Daemon.Snapshot(r.Context())
	data := []map[string]any{}
	if snap.Model != "" {
		data = append(data, map[string]any{"id": snap.Model, "object": "model", "created": s.start.Unix(), "owned_by": "mcpd"})
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data})
}
