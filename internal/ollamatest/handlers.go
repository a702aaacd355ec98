package ollamatest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/ollama/ollama/api"
)

// The HTTP handlers: each answers as Ollama v0.17 does, byte for byte
// where clients look (status codes, error bodies, NDJSON lines).

func canonical(name string) string {
	if name != "" && !strings.Contains(name, ":") {
		return name + ":latest"
	}
	return name
}

func (s *Server) model(name string) (Model, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.models[canonical(name)]
	return m, ok
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func (s *Server) root(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte("Ollama is running"))
	}
}

func (s *Server) version(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"version": "0.17.4"})
}

func (s *Server) tags(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	resp := api.ListResponse{Models: []api.ListModelResponse{}}
	for name, m := range s.models {
		resp.Models = append(resp.Models, api.ListModelResponse{Name: name, Model: name, Size: m.Size,
			ModifiedAt: time.Unix(1_700_000_000, 0).UTC(), Digest: fmt.Sprintf("%064x", len(name)),
			Details: api.ModelDetails{Format: "gguf", Family: "llama", QuantizationLevel: m.Quantization}})
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) ps(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	resp := api.ProcessResponse{Models: []api.ProcessModelResponse{}}
	for name := range s.loaded {
		m := s.models[name]
		resp.Models = append(resp.Models, api.ProcessModelResponse{Name: name, Model: name, Size: m.Size,
			SizeVRAM: m.SizeVRAM, ContextLength: m.ContextLength, ExpiresAt: time.Now().Add(5 * time.Minute).UTC(),
			Details: api.ModelDetails{Format: "gguf", Family: "llama", QuantizationLevel: m.Quantization}})
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) show(w http.ResponseWriter, r *http.Request) {
	var req api.ShowRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	name := req.Model
	if name == "" {
		name = req.Name //nolint:staticcheck // older clients send name
	}
	m, ok := s.model(name)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("model '%s' not found", name))
		return
	}
	writeJSON(w, http.StatusOK, api.ShowResponse{
		Details: api.ModelDetails{Format: "gguf", Family: "llama", ParameterSize: fmt.Sprint(m.Parameters), QuantizationLevel: m.Quantization},
		ModelInfo: map[string]any{
			"general.architecture":    "llama",
			"general.parameter_count": m.Parameters,
			"llama.context_length":    m.ContextLength,
		},
	})
}

// nextFault takes the fault for one chat request.
func (s *Server) nextFault() (Fault, Config, chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fault
	if len(s.faults) > 0 {
		f, s.faults = s.faults[0], s.faults[1:]
	}
	return f, s.cfg, s.release
}

func (s *Server) chat(w http.ResponseWriter, r *http.Request) {
	var req api.ChatRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if len(req.Messages) == 0 { // routes.go ChatHandler: "load the model"
		s.load(w, r, api.GenerateRequest{Model: req.Model, KeepAlive: req.KeepAlive}, func(done api.GenerateResponse) any {
			return api.ChatResponse{Model: done.Model, CreatedAt: done.CreatedAt, Message: api.Message{Role: "assistant"},
				Done: true, DoneReason: done.DoneReason}
		})
		return
	}
	s.mu.Lock()
	s.requests = append(s.requests, req)
	s.mu.Unlock()
	if m, ok := s.model(req.Model); ok && m.NoTools && len(req.Tools) > 0 {
		// server/images.go CheckCapabilities, as routes.go reports it.
		writeError(w, http.StatusBadRequest, fmt.Sprintf("registry.ollama.ai/library/%s does not support tools", canonical(req.Model)))
		return
	}
	call := s.scriptedCall(req)
	s.answer(w, r, req.Model, req.Stream, func(piece string, final *api.Metrics, reason string) any {
		resp := api.ChatResponse{Model: req.Model, CreatedAt: time.Now().UTC(),
			Message: api.Message{Role: "assistant", Content: piece}}
		if call != nil && (final == nil || (req.Stream != nil && !*req.Stream)) {
			// A tool call comes whole in one message, its content empty,
			// with an id of Ollama's form (routes.go toolCallId).
			resp.Message.Content = ""
			resp.Message.ToolCalls = []api.ToolCall{{ID: "call_" + fmt.Sprintf("%08d", len(req.Messages)), Function: *call}}
		}
		if final != nil {
			resp.Done, resp.DoneReason, resp.Metrics = true, reason, *final
		}
		return resp
	}, call != nil)
}

// scriptedCall is the tool call Config.Calls makes for req, or nil.
func (s *Server) scriptedCall(req api.ChatRequest) *api.ToolCallFunction {
	if len(req.Tools) == 0 {
		return nil
	}
	results := 0
	for _, m := range req.Messages {
		if m.Role == "tool" {
			results++
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if results >= len(s.cfg.Calls) {
		return nil
	}
	c := s.cfg.Calls[results]
	return &c
}

func (s *Server) generate(w http.ResponseWriter, r *http.Request) {
	var req api.GenerateRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Prompt == "" && len(req.Images) == 0 { // routes.go GenerateHandler: "load the model"
		s.load(w, r, req, func(done api.GenerateResponse) any { return done })
		return
	}
	s.answer(w, r, req.Model, req.Stream, func(piece string, final *api.Metrics, reason string) any {
		resp := api.GenerateResponse{Model: req.Model, CreatedAt: time.Now().UTC(), Response: piece}
		if final != nil {
			resp.Done, resp.DoneReason, resp.Metrics = true, reason, *final
		}
		return resp
	}, false)
}

// answer streams the configured pieces as NDJSON, or fails as the fault
// says. line builds one response object.
// With oneLine the answer is one message before the done line (a tool
// call).
func (s *Server) answer(w http.ResponseWriter, r *http.Request, model string, stream *bool,
	line func(piece string, final *api.Metrics, reason string) any, oneLine bool) {
	s.chats.Add(1)
	s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	start := time.Now()
	fault, cfg, release := s.nextFault()
	if model == "" {
		writeError(w, http.StatusBadRequest, "model is required")
		return
	}
	if _, ok := s.model(model); !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("model %q not found, try pulling it first", model))
		return
	}
	switch fault {
	case InternalError:
		writeError(w, http.StatusInternalServerError, "llama runner process has terminated: exit status 2")
		return
	case QueueFull:
		writeError(w, http.StatusServiceUnavailable, "server busy, please try again.  maximum pending requests exceeded")
		return
	case ResetConnection:
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				if tc, ok := c.(*net.TCPConn); ok {
					_ = tc.SetLinger(0) // RST, not FIN
				}
				_ = c.Close()
			}
		}
		return
	}
	wait := func(d time.Duration) bool { // false: the client left or Release
		if d <= 0 {
			return true
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-r.Context().Done():
		case <-release:
		}
		return false
	}
	stall := func() {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}

	if paid, ok := s.ensureLoaded(r, model, release); !ok {
		return
	} else if paid {
		s.mu.Lock()
		s.paidLoads++
		s.mu.Unlock()
	}
	if stream != nil && !*stream { // one object with the whole answer
		if !wait(cfg.FirstTokenDelay) {
			return
		}
		m := metrics(start, len(cfg.Tokens))
		writeJSON(w, http.StatusOK, line(strings.Join(cfg.Tokens, ""), &m, "stop"))
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	send := func(v any) bool {
		if err := enc.Encode(v); err != nil { // Encode ends each object with '\n'
			return false
		}
		if err := bw.Flush(); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}
	if fault == StallBeforeFirst {
		if flusher != nil {
			flusher.Flush() // the headers reach the client; nothing else does
		}
		stall()
		return
	}
	if !wait(cfg.FirstTokenDelay) {
		return
	}
	if oneLine {
		cfg.Tokens = []string{""}
	}
	for i, piece := range cfg.Tokens {
		if i == cfg.CutAfter {
			switch fault {
			case StallMidStream:
				stall()
				return
			case CutMidStream:
				panic(http.ErrAbortHandler) // closes the connection: no done object, no chunk terminator
			case ErrorMidStream:
				send(map[string]string{"error": "an error was encountered while running the model: unexpected EOF"})
				return
			}
		}
		if i > 0 && !wait(cfg.TokenDelay) {
			return
		}
		if !send(line(piece, nil, "")) {
			return
		}
	}
	m := metrics(start, len(cfg.Tokens))
	send(line("", &m, "stop"))
}

// ensureLoaded loads model if it is not: the caller waits LoadDelay, as a
// request waits for Ollama's scheduler to start a runner. It reports
// whether the caller waited, and false for ok when the client left first.
func (s *Server) ensureLoaded(r *http.Request, model string, release chan struct{}) (paid, ok bool) {
	s.mu.Lock()
	loaded, delay := s.loaded[canonical(model)], s.cfg.LoadDelay
	s.mu.Unlock()
	if loaded {
		return false, true
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return true, false
		case <-release:
			return true, false
		}
	}
	s.mu.Lock()
	s.loaded[canonical(model)] = true
	s.mu.Unlock()
	return true, true
}

// load answers a load request as Ollama does: one JSON object (whatever
// "stream" says) once the model is loaded, done_reason "load"; keep_alive
// 0 unloads instead ("unload"). Scripted faults are for chats: a load
// request takes none.
func (s *Server) load(w http.ResponseWriter, r *http.Request, req api.GenerateRequest, body func(api.GenerateResponse) any) {
	s.mu.Lock()
	s.loadReqs = append(s.loadReqs, req)
	release := s.release
	s.mu.Unlock()
	if req.Model == "" {
		writeError(w, http.StatusBadRequest, "model is required")
		return
	}
	if _, ok := s.model(req.Model); !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("model %q not found, try pulling it first", req.Model))
		return
	}
	done := api.GenerateResponse{Model: req.Model, CreatedAt: time.Now().UTC(), Done: true, DoneReason: "load"}
	if req.KeepAlive != nil && req.KeepAlive.Duration == 0 {
		s.Unload(req.Model)
		done.DoneReason = "unload"
	} else if _, ok := s.ensureLoaded(r, req.Model, release); !ok {
		return
	}
	writeJSON(w, http.StatusOK, body(done))
}

func metrics(start time.Time, tokens int) api.Metrics {
	total := time.Since(start)
	return api.Metrics{TotalDuration: total, LoadDuration: total / 10, PromptEvalCount: 12,
		PromptEvalDuration: total / 5, EvalCount: tokens, EvalDuration: total / 2}
}
