package daemon

import (
	"fmt"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// Config bounds the daemon. Zero fields take the defaults of WithDefaults.
type Config struct {
	MaxSessions       int           // sessions at once; a HELLO beyond it gets ERROR BUSY
	MaxConcurrent     int           // requests running in the engine at once
	MaxQueue          int           // accepted requests waiting for the engine, beyond it ERROR BUSY; negative: none
	MaxHistory        int           // chat messages kept per session (user + assistant)
	MaxMessage        int           // largest reassembled INFER body
	Heartbeat         time.Duration // announced in WELCOME; a session expires after 3 missed
	RequestTimeout    time.Duration // deadline of a request unless INFER's DEADLINE_MS is shorter
	FlushInterval     time.Duration // longest wait before a partly filled TOKEN frame goes out
	MaxRetransmits    int           // retransmissions of one chunk before the request is dropped
	DefaultMaxTokens  int           // when INFER has no MAX_TOKENS
	ShutdownDrain     time.Duration // how long in-flight requests may finish on shutdown
	MaxPendingPerPeer int           // fragmented messages in reassembly per session
	MaxPerSession     int           // accepted requests one device may have at once
	StallTimeout      time.Duration // an engine call with no output for this long counts as hung (Alive)
	// Keys holds each signing device's pre-shared key by device id: such a
	// device must sign every frame, and so does the daemon (§9).
	Keys map[string]serialproto.Key
	// Per-source rate limit on UDP (guard.go): PeerRate frames a second on
	// average, PeerBurst at once; 0: no limit (the default: a benchmark on
	// loopback sends far faster than a device). MaxPeers bounds the
	// sources tracked.
	PeerRate  float64
	PeerBurst int
	MaxPeers  int
	Policy    AccessPolicy // who may connect, with which models, how many tokens
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.MaxSessions, 256)
	def(&c.MaxConcurrent, 2)
	switch {
	case c.MaxQueue == 0:
		c.MaxQueue = 16
	case c.MaxQueue < 0:
		c.MaxQueue = 0
	}
	def(&c.MaxHistory, 16)
	def(&c.MaxMessage, serialproto.DefaultMaxMessage)
	def(&c.MaxRetransmits, 8)
	def(&c.DefaultMaxTokens, 128)
	def(&c.MaxPendingPerPeer, 2)
	def(&c.MaxPerSession, 4)
	c.PeerRate = max(c.PeerRate, 0) // 0 or negative: no limit
	def(&c.PeerBurst, 512)          // a 255-fragment INFER, sent twice
	def(&c.MaxPeers, 4096)
	defDur(&c.Heartbeat, 5*time.Second)
	defDur(&c.RequestTimeout, 2*time.Minute)
	defDur(&c.FlushInterval, 20*time.Millisecond)
	defDur(&c.ShutdownDrain, 10*time.Second)
	defDur(&c.StallTimeout, 2*time.Minute)
	return c
}

// Validate reports the first impossible setting.
func (c Config) Validate() error {
	switch {
	case c.MaxMessage > serialproto.MaxMessageLimit:
		return fmt.Errorf("daemon: max message %d above the protocol's %d", c.MaxMessage, serialproto.MaxMessageLimit)
	case c.Heartbeat > 65535*time.Millisecond:
		return fmt.Errorf("daemon: heartbeat %v above 65.535 s", c.Heartbeat)
	}
	return c.Policy.validate()
}
