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
	MinRTO            time.Duration // floor of the adaptive UDP retransmission timeout (§7.2); default 10 ms, at least 1 ms
	MaxRetransmits    int           // retransmissions of one chunk before the request is dropped
	DefaultMaxTokens  int           // when INFER has no MAX_TOKENS
	ShutdownDrain     time.Duration // how long in-flight requests may finish on shutdown
	MaxPendingPerPeer int           // fragmented messages in reassembly per session
	MaxPerSession     int           // accepted requests one device may have at once (per session and per device id)
	// Fairness between sources and devices (admission.go, sessions.go):
	// a source is one IP address (any port) or one serial port.
	MaxPerSource         int // accepted requests one source may have at once; default half the queue; negative: none
	MaxSessionsPerSource int // sessions one source may hold; default 32; negative: none
	MaxSessionsPerDevice int // sessions one device id may hold (a new one replaces its oldest); default 4; negative: none
	// MaxTokens caps an INFER's MAX_TOKENS (and a local request's, and
	// DefaultMaxTokens); default 1024, or DefaultMaxTokens if larger.
	MaxTokens int
	// BoundLoopbackReplies applies the reflection bound (answers to a
	// datagram source without a session never total more bytes than it
	// sent, intake.go) to loopback sources too; off, they are exempt, as
	// no packet from the network can claim a loopback source. For tests
	// and the soak's hostile scenarios, which run on loopback.
	BoundLoopbackReplies bool
	// MaxContext caps an INFER's CONTEXT option (the engine's context size
	// in tokens, Ollama's num_ctx): a device must not make the engine
	// allocate a context of billions of tokens. Default 8192.
	MaxContext int
	// LocalShare is the percentage of the queue (MaxConcurrent + MaxQueue)
	// local applications (the HTTP API) may hold; the rest is the
	// devices'. Default 50; 100: no reservation for devices.
	LocalShare   int
	StallTimeout time.Duration // an engine call with no output for this long counts as hung (Alive)
	// Keys holds each signing device's pre-shared key by device id: such a
	// device must sign every frame, and so does the daemon (§9).
	Keys map[string]serialproto.Key
	// Per-source rate limit on UDP (guard.go), by IP address whatever the
	// port: PeerRate frames a second on average, PeerBurst at once. Default
	// 2000/s and 1024: far above what a microcontroller sends (a UART at
	// 115200 baud carries about 45 full frames a second), far below a
	// flood. Negative: no limit (benchmarks on loopback). MaxPeers bounds
	// the sources tracked.
	PeerRate  float64
	PeerBurst int
	MaxPeers  int
	Policy    AccessPolicy // who may connect, with which models, how many tokens
	// Schemas are the answer constraints a device names by id in an
	// INFER's SCHEMA option (docs/protocol.md §11.4.1).
	Schemas map[uint8]Schema
	// Device tools (docs/protocol.md §16, tools.go).
	ToolTimeout    time.Duration // how long a device may take to answer a TOOL_CALL once it has acknowledged it; default 5 s
	MaxToolCalls   int           // tool calls one request may make (a model looping on a tool); default 4
	MaxToolDevices int           // device ids whose declarations are kept; beyond it the oldest go; default 1024
	// ToolChoice "first" makes the model call a tool in its first
	// generation of a TOOLS_ON request (the in-process engine's must-call
	// grammar), "auto" (the default) lets it choose: a demonstration and
	// test setting for models that would never call on their own.
	ToolChoice string
	// Kept conversations (chats.go, docs/protocol.md §10): a device that
	// proves who it is (signed, or the one device on a serial port or
	// behind an MQTT topic) may resume its chat after its session ended or
	// the daemon restarted. ChatBudget bounds what is kept for ended
	// sessions and what is saved, in bytes (default 16 MiB); ChatFile is
	// where the conversations are saved at stop and reload and loaded at
	// start ("" none); ChatModel names what the daemon serves with, and a
	// file saved for another is refused. SaveInterval saves them that
	// often when they changed, WarmSaveInterval the engine's warm cache
	// (backends.WarmSaver; saver.go); zero: only at stop and reload (the
	// service saves both then). ResumeUnsigned lets an unsigned UDP device
	// resume by its id alone (a trusted network).
	ChatFile         string
	ChatModel        string
	ChatBudget       int64
	SaveInterval     time.Duration
	WarmSaveInterval time.Duration
	ResumeUnsigned   bool
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
	def(&c.MaxHistory, 20) // a 10-turn chat whole: docs/caching.md
	def(&c.MaxMessage, serialproto.DefaultMaxMessage)
	def(&c.MaxRetransmits, 8)
	def(&c.DefaultMaxTokens, 128)
	def(&c.MaxPendingPerPeer, 2)
	def(&c.MaxPerSession, 4)
	// Negative limits stay negative (none), so defaults apply once however
	// often WithDefaults runs.
	if c.MaxPerSource == 0 {
		c.MaxPerSource = max(c.MaxPerSession, (c.MaxConcurrent+c.MaxQueue)/2)
	}
	if c.MaxSessionsPerSource == 0 {
		c.MaxSessionsPerSource = 32
	}
	if c.MaxSessionsPerDevice == 0 {
		c.MaxSessionsPerDevice = 4
	}
	if c.MaxTokens <= 0 {
		c.MaxTokens = max(1024, c.DefaultMaxTokens)
	}
	c.DefaultMaxTokens = min(c.DefaultMaxTokens, c.MaxTokens)
	def(&c.LocalShare, 50)
	def(&c.MaxContext, 8192)
	c.LocalShare = min(c.LocalShare, 100)
	if c.PeerRate == 0 {
		c.PeerRate = 2000
	}
	def(&c.PeerBurst, 1024) // a 255-fragment INFER, sent twice, and then some
	def(&c.MaxPeers, 4096)
	defDur(&c.Heartbeat, 5*time.Second)
	defDur(&c.RequestTimeout, 2*time.Minute)
	defDur(&c.FlushInterval, 20*time.Millisecond)
	defDur(&c.MinRTO, serialproto.MinRTO)
	defDur(&c.ShutdownDrain, 10*time.Second)
	defDur(&c.StallTimeout, 2*time.Minute)
	defDur(&c.ToolTimeout, 5*time.Second)
	def(&c.MaxToolCalls, 4)
	def(&c.MaxToolDevices, 1024)
	if c.ToolChoice == "" {
		c.ToolChoice = "auto"
	}
	if c.ChatBudget <= 0 {
		c.ChatBudget = 16 << 20
	}
	return c
}

// Validate reports the first impossible setting.
func (c Config) Validate() error {
	switch {
	case c.MaxMessage > serialproto.MaxMessageLimit:
		return fmt.Errorf("daemon: max message %d above the protocol's %d", c.MaxMessage, serialproto.MaxMessageLimit)
	case c.MinRTO != 0 && (c.MinRTO < serialproto.RTOGranularity || c.MinRTO > serialproto.MaxRTO):
		return fmt.Errorf("daemon: min RTO %v outside %v..%v", c.MinRTO, serialproto.RTOGranularity, serialproto.MaxRTO)
	case c.Heartbeat > 65535*time.Millisecond:
		return fmt.Errorf("daemon: heartbeat %v above 65.535 s", c.Heartbeat)
	case c.ToolChoice != "" && c.ToolChoice != "auto" && c.ToolChoice != "first":
		return fmt.Errorf("daemon: tool choice %q: want auto or first", c.ToolChoice)
	case c.MaxToolCalls > 255:
		return fmt.Errorf("daemon: max tool calls %d above 255 (a call index is one byte)", c.MaxToolCalls)
	}
	return c.Policy.validate()
}
