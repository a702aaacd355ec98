package ollama

import (
	"strings"
	"sync"
	"sync/atomic"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/ollama/ollama/api"
)

// Presence of a model on an endpoint, as last seen.
type Presence uint8

const (
	PresenceUnknown Presence = iota
	PresencePresent
	PresenceMissing
)

func (p Presence) String() string {
	return [...]string{"unknown", "present", "missing"}[p]
}

type endpoint struct {
	url      string
	parallel int // requests the server runs at once
	client   *api.Client
	breaker  *breaker
	inFlight atomic.Int64
	requests atomic.Int64

	mu        sync.Mutex
	presence  map[string]Presence // canonical model name → last seen
	info      backends.ModelInfo  // of the default model, from /api/show
	size      int64
	sizeVRAM  int64
	lastError string

	warm warmState // warmup.go
}

func (ep *endpoint) setPresence(model string, p Presence) (changed bool) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	k := canonicalModel(model)
	changed = ep.presence[k] != p
	ep.presence[k] = p
	return changed
}

func (ep *endpoint) presenceOf(model string) Presence {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return ep.presence[canonicalModel(model)]
}

// canonicalModel adds Ollama's default tag: "m" and "m:latest" are one.
func canonicalModel(name string) string {
	if name != "" && !strings.Contains(name, ":") {
		return name + ":latest"
	}
	return name
}

// Ollama is the backend for one or more Ollama servers. All endpoints share
