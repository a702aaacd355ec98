package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/serialproto"
	"github.com/ollama/ollama/api"
)

// Ollama- and OpenAI-compatible endpoints, so that tools written for them
// can point at mcpd: POST /api/generate and /api/chat (Ollama's NDJSON
// stream, or one object with "stream": false), GET /api/tags and
// /api/version; POST /v1/chat/completions (OpenAI's, SSE when "stream":
// true) and GET /v1/models. Every request goes through the daemon's
// admission, queue and limits as /v1/generate and a device's INFER do.

// flavor is how one API family writes a stream and its errors.
type flavor struct {
	contentType string
	// piece is the stream's line (or event) for a piece of text; first
	// is true for the first.
	piece func(text string, first bool) ([]byte, error)
	// done is the stream's last line(s) after success.
	done func(res backends.Result) ([]byte, error)
	// fail is the stream's last line after a failure once text went out.
	fail func(code serialproto.ErrorCode, msg string) []byte
	// refuse answers a failure before any output, with an HTTP status.
	refuse func(w http.ResponseWriter, status int, code serialproto.ErrorCode, msg string)
	// whole is the body of a non-streaming answer.
	whole func(text string, res backends.Result) any
}

// modelFor maps a client's model name to the daemon's: tools always send
// one, and the name the daemon serves under (or "", "default") means the
// default model; any other name goes to the engine, which may know it
// (Ollama) or answer MODEL_NOT_FOUND.
func (s *Server) modelFor(ctx context.Context, name string) string {
	if name == "" || name == "default" || name == "mcpd" {
		return ""
	}
	if snap := s.cfg.Daemon.Snapshot(ctx); name == snap.Model || strings.TrimSuffix(name, ":latest") == snap.Model {
		return ""
	}
	return name
}

// runCompat runs req and answers in f's format, streaming or whole.
func (s *Server) runCompat(w http.ResponseWriter, r *http.Request, req daemon.LocalRequest, stream bool, f flavor) {
	req.Client = clientOf(r)
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	if !stream {
		var text strings.Builder
		res, err := s.cfg.Daemon.Generate(ctx, req, func(piece []byte) error {
			if text.Len()+len(piece) > maxBody {
				return errors.New("httpapi: answer too large to return whole; stream it")
			}
			text.Write(piece)
			return nil
		})
		if err != nil {
			status, code := failure(err)
			f.refuse(w, status, code, err.Error())
			return
		}
		writeCompact(w, http.StatusOK, f.whole(text.String(), res))
		return
	}
	// As /v1/generate: the status waits for the first piece; a slow
	// reader is cut off by the streamer rather than holding the engine.
	var st *streamer
	res, err := s.cfg.Daemon.Generate(ctx, req, func(piece []byte) error {
		first := st == nil
		if first {
			w.Header().Set("Content-Type", f.contentType)
			w.Header().Set("Cache-Control", "no-cache")
			w.WriteHeader(http.StatusOK)
			st = newStreamer(w, cancel, writeTimeout)
		}
		line, err := f.piece(string(piece), first)
		if err != nil {
			return err
		}
		return st.push(line)
	})
	if st != nil {
		if serr := st.close(); serr != nil {
			s.cfg.Log.Debug("stream cut", "client", req.Client, "err", serr)
			panic(http.ErrAbortHandler)
		}
	}
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(writeTimeout))
	if err != nil {
		status, code := failure(err)
		if st == nil {
			f.refuse(w, status, code, err.Error())
			return
		}
		_, _ = w.Write(f.fail(code, err.Error()))
		return
	}
	if st == nil { // an empty answer
		w.Header().Set("Content-Type", f.contentType)
		w.WriteHeader(http.StatusOK)
	}
	b, err := f.done(res)
	if err == nil {
		_, _ = w.Write(b)
	}
}

// failure is an error's HTTP status and protocol code.
func failure(err error) (int, serialproto.ErrorCode) {
	code := serialproto.CodeBackendFailed
	var rerr *daemon.RequestError
	if errors.As(err, &rerr) {
		code = rerr.Code
	}
	return httpStatus(code, err), code
}

func retryAfter(w http.ResponseWriter, status int) {
	if status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
}

// writeCompact writes v as one line of JSON: Ollama's client reads even a
// whole answer line by line.
func writeCompact(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// decodeCompat reads a request body into v: unknown fields are allowed
// (tools send many this server ignores).
func decodeCompat(w http.ResponseWriter, r *http.Request, v any) error {
	return json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody)).Decode(v)
}

// ---- Ollama ----

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
			fail: func(code serialproto.ErrorCode, msg string) []byte {
				b, _ := ndjson(map[string]string{"error": code.String() + ": " + msg})
				return b
			},
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
			fail: func(code serialproto.ErrorCode, msg string) []byte {
				b, _ := ndjson(map[string]string{"error": code.String() + ": " + msg})
				return b
			},
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

// ---- OpenAI ----

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
