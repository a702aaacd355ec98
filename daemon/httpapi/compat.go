package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/serialproto"
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
