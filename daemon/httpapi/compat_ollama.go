package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/serialproto"
	"github.com/ollama/ollama/api"
)

// Ollama's API (/api/generate, /api/chat, /api/tags, /api/version) on
// the devices' queue and limits; runCompat in compat.go does the serving.

func ollamaError(w http.ResponseWriter, status int, code serialproto.ErrorCode, msg string) {
	retryAfter(w, status)
	writeCompact(w, status, map[string]string{"error": code.String() + ": " + msg})
}

// ollamaOptions maps Ollama's options (by its JSON names) to the engine's.
func ollamaOptions(m map[string]any) (backends.Options, error) {
	var o backends.Options
	if len(m) == 0 {
		return o, nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return o, err
	}
	var opts struct {
		api.Options
		Temperature *float32 `json:"temperature"`
		Seed        *int     `json:"seed"`
	}
	if err := json.Unmarshal(b, &opts); err != nil {
		return o, fmt.Errorf("options: %w", err)
	}
	if opts.NumPredict > 0 {
		o.MaxTokens = opts.NumPredict
	}
	o.TopK, o.TopP, o.MinP, o.RepeatPenalty, o.Stop = opts.TopK, opts.TopP, opts.MinP, opts.RepeatPenalty, opts.Stop
	if opts.Temperature != nil {
		o.Temperature, o.TemperatureSet = *opts.Temperature, true
	}
	if opts.Seed != nil && *opts.Seed >= 0 {
		o.Seed, o.SeedSet = uint32(*opts.Seed), true
	}
	if opts.NumCtx > 0 {
		o.ContextSize = opts.NumCtx
	}
	return o, nil
}

func ollamaMetrics(res backends.Result) api.Metrics {
	return api.Metrics{TotalDuration: res.Duration, PromptEvalCount: res.PromptTokens, EvalCount: res.Tokens,
		PromptEvalDuration: res.TTFT, EvalDuration: max(res.Duration-res.TTFT, 0)}
}

func ollamaDoneReason(res backends.Result) string {
	if res.Stop == backends.StopLength || res.Stop == backends.StopContext {
		return "length"
	}
	return "stop"
}

func ndjson(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	return append(b, '\n'), err
}

func (s *Server) ollamaGenerate(w http.ResponseWriter, r *http.Request) {
	var req api.GenerateRequest
	if err := decodeCompat(w, r, &req); err != nil {
		ollamaError(w, http.StatusBadRequest, serialproto.CodeMalformed, "request body: "+err.Error())
		return
	}
	if req.Prompt == "" {
		// Ollama loads the model for an empty prompt; here it is ready.
		writeCompact(w, http.StatusOK, api.GenerateResponse{Model: req.Model, CreatedAt: time.Now().UTC(), Done: true, DoneReason: "load"})
		return
	}
	if len(req.Images) > 0 || len(req.Format) > 0 && string(req.Format) != `""` {
		ollamaError(w, http.StatusBadRequest, serialproto.CodeUnsupportedOption, "images and format are not supported by mcpd")
		return
	}
	opts, err := ollamaOptions(req.Options)
	if err != nil {
		ollamaError(w, http.StatusBadRequest, serialproto.CodeMalformed, err.Error())
		return
	}
	model := req.Model
	resp := func() api.GenerateResponse { return api.GenerateResponse{Model: model, CreatedAt: time.Now().UTC()} }
	s.runCompat(w, r, daemon.LocalRequest{Model: s.modelFor(r.Context(), req.Model), System: req.System, Prompt: req.Prompt, Options: opts},
		req.Stream == nil || *req.Stream, flavor{
			contentType: "application/x-ndjson",
			piece: func(text string, _ bool) ([]byte, error) {
				g := resp()
				g.Response = text
				return ndjson(g)
			},
			done: func(res backends.Result) ([]byte, error) {
				g := resp()
				g.Done, g.DoneReason, g.Metrics = true, ollamaDoneReason(res), ollamaMetrics(res)
				return ndjson(g)
			},
			fail:   ollamaStreamError,
			refuse: ollamaError,
			whole: func(text string, res backends.Result) any {
				g := resp()
				g.Response, g.Done, g.DoneReason, g.Metrics = text, true, ollamaDoneReason(res), ollamaMetrics(res)
				return g
			},
		})
}

// chatMessages checks and converts a conversation.
func chatMessages(roles []string, contents []string) ([]backends.Message, error) {
	if len(roles) == 0 {
		return nil, errors.New("messages is empty")
	}
	msgs := make([]backends.Message, len(roles))
	for i, role := range roles {
		switch backends.Role(role) {
		case backends.RoleSystem, backends.RoleUser, backends.RoleAssistant:
		default:
			return nil, fmt.Errorf("message %d: role %q (want system, user or assistant)", i, role)
		}
		msgs[i] = backends.Message{Role: backends.Role(role), Content: contents[i]}
	}
	if msgs[len(msgs)-1].Role != backends.RoleUser {
		return nil, errors.New("the last message must be the user's")
	}
	return msgs, nil
}

func (s *Server) ollamaChat(w http.ResponseWriter, r *http.Request) {
	var req api.ChatRequest
	if err := decodeCompat(w, r, &req); err != nil {
		ollamaError(w, http.StatusBadRequest, serialproto.CodeMalformed, "request body: "+err.Error())
		return
	}
	roles, contents := make([]string, len(req.Messages)), make([]string, len(req.Messages))
	for i, m := range req.Messages {
		if len(m.Images) > 0 || len(m.ToolCalls) > 0 {
			ollamaError(w, http.StatusBadRequest, serialproto.CodeUnsupportedOption, "images and tool calls are not supported by mcpd")
			return
		}
		roles[i], contents[i] = m.Role, m.Content
	}
	if len(roles) == 0 {
		writeCompact(w, http.StatusOK, api.ChatResponse{Model: req.Model, CreatedAt: time.Now().UTC(), Done: true, DoneReason: "load",
			Message: api.Message{Role: "assistant"}})
		return
	}
	msgs, err := chatMessages(roles, contents)
	if err != nil {
		ollamaError(w, http.StatusBadRequest, serialproto.CodeMalformed, err.Error())
		return
	}
	opts, err := ollamaOptions(req.Options)
	if err != nil {
		ollamaError(w, http.StatusBadRequest, serialproto.CodeMalformed, err.Error())
		return
	}
	model := req.Model
	resp := func(text string) api.ChatResponse {
		return api.ChatResponse{Model: model, CreatedAt: time.Now().UTC(), Message: api.Message{Role: "assistant", Content: text}}
	}
	s.runCompat(w, r, daemon.LocalRequest{Model: s.modelFor(r.Context(), req.Model), Messages: msgs, Options: opts},
		req.Stream == nil || *req.Stream, flavor{
			contentType: "application/x-ndjson",
			piece:       func(text string, _ bool) ([]byte, error) { return ndjson(resp(text)) },
			done: func(res backends.Result) ([]byte, error) {
				c := resp("")
				c.Done, c.DoneReason, c.Metrics = true, ollamaDoneReason(res), ollamaMetrics(res)
				return ndjson(c)
			},
			fail:   ollamaStreamError,
			refuse: ollamaError,
			whole: func(text string, res backends.Result) any {
				c := resp(text)
				c.Done, c.DoneReason, c.Metrics = true, ollamaDoneReason(res), ollamaMetrics(res)
				return c
			},
		})
}

// ollamaTags lists the model mcpd serves, as /api/tags does.
func (s *Server) ollamaTags(w http.ResponseWriter, r *http.Request) {
	snap := s.cfg.Daemon.Snapshot(r.Context())
	list := api.ListResponse{Models: []api.ListModelResponse{}}
	if snap.Model != "" {
		list.Models = append(list.Models, api.ListModelResponse{Name: snap.Model, Model: snap.Model, ModifiedAt: s.start})
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) ollamaVersion(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"version": "0.0.0-mcpd-" + s.cfg.Version})
}

// ollamaStreamError is the NDJSON line that ends a stream Ollama's way
// when the request fails after its first piece.
func ollamaStreamError(code serialproto.ErrorCode, msg string) []byte {
	b, _ := ndjson(map[string]string{"error": code.String() + ": " + msg})
	return b
}
