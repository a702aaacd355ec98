package daemon

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/mcpd-project/mcpd/serialproto"
)

// Stats are the daemon's counters: the one record of what happened. Each
// event is counted once, where it happens, by one call; nothing else
// counts. Two views read them: /status and STATUS-like tools read the
// totals (the exported fields; Snapshot.Counters is a copy), and the
// Prometheus collector (daemon/telemetry) reads the same totals' per-link
// breakdown with Links and the tokens by engine with Tokens, at scrape
// time.
type Stats struct {
	FramesIn, FramesOut, BadFrames         atomic.Int64
	AuthFailures                           atomic.Int64 // unsigned, bad tag, replayed or stale frames
	Sessions                               atomic.Int64 // open now
	Accepted, Busy, Done, Failed, Canceled atomic.Int64
	Duplicates                             atomic.Int64 // retransmitted requests answered again
	// AuthFailures by reason (§9.2).
	AuthUnsigned, AuthBadTag, AuthReplay, AuthStale atomic.Int64
	RateLimited                                     atomic.Int64 // frames over a source's rate, dropped; INFERs over a budget
	Forbidden                                       atomic.Int64 // HELLOs and INFERs the policy refused
	Evicted                                         atomic.Int64 // idle sessions closed to make room
	Retransmits                                     atomic.Int64 // stream chunks sent again
	LogSuppressed                                   atomic.Int64 // remote-caused log lines held back (logsample.go)
	HistoryTrimmed                                  atomic.Int64 // times a chat history was halved to fit the model's context
	Unanswered                                      atomic.Int64 // answers to unproven sources not sent: they would reflect more bytes than came
	ToolCalls                                       atomic.Int64 // TOOL_CALLs sent to devices (§16)
	ToolTimeouts                                    atomic.Int64 // of them, unanswered within the tool timeout

	links  sync.Map // link name → *linkCounters
	tokens sync.Map // engine name → *atomic.Int64
	quiet  sync.Map // remote-caused log event → *atomic.Int64 lines held back; bounded by the code's events
}

// suppressed counts a remote-caused log line the sampler held back.
func (s *Stats) suppressed(event string) {
	s.LogSuppressed.Add(1)
	n, ok := s.quiet.Load(event)
	if !ok {
		n, _ = s.quiet.LoadOrStore(event, new(atomic.Int64))
	}
	n.(*atomic.Int64).Add(1)
}

// SuppressedLogs is how many remote-caused log lines of each event were
// held back (logsample.go).
func (s *Stats) SuppressedLogs() map[string]int64 {
	out := make(map[string]int64)
	s.quiet.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	return out
}

// linkCounters are one link's share of the totals. Links are bounded by
// the configuration (and the serial ports a glob matched), never by the
// devices, so the map is small.
type linkCounters struct {
	frames      [2][256]atomic.Int64 // by FrameDirection and command byte
	badFrames   [len(badFrameReasons)]atomic.Int64
	retransmits atomic.Int64
	skipped     atomic.Int64 // bytes a byte stream's decoder discarded
	reconnects  atomic.Int64
	sessions    atomic.Int64 // open now
	hadSession  atomic.Bool  // the sessions series exists from the first one on

	mu       sync.Mutex
	requests map[requestKey]int64
}

type requestKey struct{ outcome, code string }

// badFrameReasons name why a frame was rejected before parsing.
var badFrameReasons = [...]string{"crc", "too_long", "malformed"}

func badFrameReason(err error) int {
	switch {
	case errors.Is(err, serialproto.ErrBadCRC):
		return 0
	case errors.Is(err, serialproto.ErrTooLong):
		return 1
	}
	return 2
}

func (s *Stats) link(name string) *linkCounters {
	if c, ok := s.links.Load(name); ok {
		return c.(*linkCounters)
	}
	c, _ := s.links.LoadOrStore(name, &linkCounters{})
	return c.(*linkCounters)
}

// frame counts a sound frame received or sent.
func (s *Stats) frame(link string, dir FrameDirection, cmd serialproto.Command) {
	if dir == FrameIn {
		s.FramesIn.Add(1)
	} else {
		s.FramesOut.Add(1)
	}
	s.link(link).frames[dir][cmd].Add(1)
}

// badFrame counts a frame rejected before parsing.
func (s *Stats) badFrame(link string, err error) {
	s.BadFrames.Add(1)
	s.link(link).badFrames[badFrameReason(err)].Add(1)
}

// retransmit counts a stream chunk sent again.
func (s *Stats) retransmit(link string) {
	s.Retransmits.Add(1)
	s.link(link).retransmits.Add(1)
}

// sessionOpened and sessionClosed count a session in and out.
func (s *Stats) sessionOpened(link string) {
	s.Sessions.Add(1)
	c := s.link(link)
	c.hadSession.Store(true)
	c.sessions.Add(1)
}

func (s *Stats) sessionClosed(link string) {
	s.Sessions.Add(-1)
	s.link(link).sessions.Add(-1)
}

// linkStats adds a byte-stream link's decoder counters.
func (s *Stats) linkStats(link string, skipped int64, reconnects int) {
	c := s.link(link)
	c.skipped.Add(skipped)
	c.reconnects.Add(int64(reconnects))
}

// refused counts a request turned away before it ran, by its error code.
// (Busy, RateLimited and Forbidden count some of these again, by cause.)
func (s *Stats) refused(link string, code serialproto.ErrorCode) {
	s.link(link).request(requestKey{"refused", code.String()})
}

// ended counts an accepted request's end: in the totals as done, canceled
// (by its device or its caller) or failed, and per link by outcome and
// error code (code is meaningless when err is nil).
func (s *Stats) ended(link string, err error, code serialproto.ErrorCode, canceled bool) {
	switch {
	case err == nil:
		s.Done.Add(1)
	case canceled:
		s.Canceled.Add(1)
	default:
		s.Failed.Add(1)
	}
	label := "none"
	if err != nil {
		label = code.String()
	}
	s.link(link).request(requestKey{Outcome(err, code), label})
}

func (c *linkCounters) request(k requestKey) {
	c.mu.Lock()
	if c.requests == nil {
		c.requests = make(map[requestKey]int64)
	}
	c.requests[k]++
	c.mu.Unlock()
}

// generated counts tokens an engine generated.
func (s *Stats) generated(engine string, tokens int) {
	if tokens <= 0 {
		return
	}
	n, ok := s.tokens.Load(engine)
	if !ok {
		n, _ = s.tokens.LoadOrStore(engine, new(atomic.Int64))
	}
	n.(*atomic.Int64).Add(int64(tokens))
}

// Counters is a copy of the totals of Stats, for /status.
type Counters struct {
	FramesIn     int64 `json:"frames_in"`
	FramesOut    int64 `json:"frames_out"`
	BadFrames    int64 `json:"bad_frames"`
	AuthFailures int64 `json:"auth_failures"`
	Accepted     int64 `json:"accepted"`
	Busy         int64 `json:"busy"`
	Done         int64 `json:"done"`
	Failed       int64 `json:"failed"`
	Canceled     int64 `json:"canceled"`
	Duplicates   int64 `json:"duplicates"`
	// Rejected signed-session frames by reason, and the guard's counters
	// (docs/reliability.md).
	AuthUnsigned int64 `json:"auth_unsigned"`
	AuthBadTag   int64 `json:"auth_bad_tag"`
	AuthReplay   int64 `json:"auth_replay"`
	AuthStale    int64 `json:"auth_stale"`
	RateLimited  int64 `json:"rate_limited"`
	Forbidden    int64 `json:"forbidden"`
	Evicted      int64 `json:"evicted"`
	Retransmits  int64 `json:"retransmits"`
	// LogSuppressed: log lines remote peers caused that the sampler held
	// back (written at debug level only).
	LogSuppressed int64 `json:"log_suppressed"`
}

// Counters copies the totals.
func (s *Stats) Counters() Counters {
	return Counters{
		FramesIn: s.FramesIn.Load(), FramesOut: s.FramesOut.Load(), BadFrames: s.BadFrames.Load(),
		AuthFailures: s.AuthFailures.Load(), Accepted: s.Accepted.Load(), Busy: s.Busy.Load(),
		Done: s.Done.Load(), Failed: s.Failed.Load(), Canceled: s.Canceled.Load(), Duplicates: s.Duplicates.Load(),
		AuthUnsigned: s.AuthUnsigned.Load(), AuthBadTag: s.AuthBadTag.Load(), AuthReplay: s.AuthReplay.Load(), AuthStale: s.AuthStale.Load(),
		RateLimited: s.RateLimited.Load(), Forbidden: s.Forbidden.Load(), Evicted: s.Evicted.Load(), Retransmits: s.Retransmits.Load(),
		LogSuppressed: s.LogSuppressed.Load(),
	}
}

// LinkCounters is one link's share of the counters, as Links reads it.
// Series that never counted anything are left out.
type LinkCounters struct {
	Link         string
	Sessions     int64 // open now
	HadSessions  bool  // Sessions is a series: a session was opened here
	Frames       []FrameCount
	BadFrames    map[string]int64 // by reason: crc, too_long, malformed
	Retransmits  int64
	SkippedBytes int64
	Reconnects   int64
	Requests     []RequestCount
}

// FrameCount is the frames of one command in one direction.
type FrameCount struct {
	Direction FrameDirection
	Command   serialproto.Command
	N         int64
}

// RequestCount is the requests that ended one way: Outcome (done,
// cancelled, timeout, failed, refused, as Outcome names them) and Code (the
// protocol error code, "none" when done).
type RequestCount struct {
	Outcome, Code string
	N             int64
}

// Links reads the per-link counters, sorted by link.
func (s *Stats) Links() []LinkCounters {
	var out []LinkCounters
	s.links.Range(func(k, v any) bool {
		out = append(out, v.(*linkCounters).read(k.(string)))
		return true
	})
	slices.SortFunc(out, func(a, b LinkCounters) int { return strings.Compare(a.Link, b.Link) })
	return out
}

func (c *linkCounters) read(link string) LinkCounters {
	lc := LinkCounters{
		Link: link, Sessions: c.sessions.Load(), HadSessions: c.hadSession.Load(),
		Retransmits: c.retransmits.Load(), SkippedBytes: c.skipped.Load(), Reconnects: c.reconnects.Load(),
	}
	for dir := range c.frames {
		for cmd := range c.frames[dir] {
			if n := c.frames[dir][cmd].Load(); n > 0 {
				lc.Frames = append(lc.Frames, FrameCount{FrameDirection(dir), serialproto.Command(cmd), n})
			}
		}
	}
	for i, reason := range badFrameReasons {
		if n := c.badFrames[i].Load(); n > 0 {
			if lc.BadFrames == nil {
				lc.BadFrames = make(map[string]int64)
			}
			lc.BadFrames[reason] = n
		}
	}
	c.mu.Lock()
	for k, n := range c.requests {
		lc.Requests = append(lc.Requests, RequestCount{k.outcome, k.code, n})
	}
	c.mu.Unlock()
	slices.SortFunc(lc.Requests, func(a, b RequestCount) int {
		return strings.Compare(a.Outcome+" "+a.Code, b.Outcome+" "+b.Code)
	})
	return lc
}

// Tokens reads the tokens generated, by engine name.
func (s *Stats) Tokens() map[string]int64 {
	out := make(map[string]int64)
	s.tokens.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	return out
}

// FrameDirection says whether the daemon received a frame or sent it.
// (serialproto.Direction is another thing: which way a signature's nonce
// runs.)
type FrameDirection uint8

const (
	FrameIn  FrameDirection = iota // received from a device
	FrameOut                       // sent to a device
)

func (d FrameDirection) String() string {
	if d == FrameIn {
		return "in"
	}
	return "out"
}
