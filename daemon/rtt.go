package daemon

import (
	"sync"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// rttState is a session's RFC 6298 estimate, shared by its streams.
type rttState struct {
	mu sync.Mutex
	e  serialproto.RTTEstimator
}

func newRTTState(initial, minRTO time.Duration) *rttState {
	return &rttState{e: serialproto.NewRTTEstimator(initial, minRTO, serialproto.MaxRTO)}
}

func (r *rttState) sample(d time.Duration) {
	r.mu.Lock()
	r.e.Sample(d)
	r.mu.Unlock()
}

// rto is the estimate without back-off: each stream backs off on its own.
func (r *rttState) rto() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.e.RTO()
}
