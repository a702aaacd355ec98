package daemon

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Log lines that a remote peer can cause (a rejected frame, a session
// opened, an error a device reports) go through a sampler: at most
// remoteLinesPerEvent lines a second of each event and remoteLinesTotal of
// all of them, so a flood of frames cannot flood the journal (whose own
// rate limit would then drop the lines that matter). A line that does go
// out carries how many of its event were suppressed since the last one;
// the suppressed lines are still written at debug level (per-frame
// detail, for whoever turns debug on), and counted
// (mcpd_log_lines_suppressed_total).
//
// A device's finished requests (reqlog.go) have a bound of their own,
// remoteRequestLines a second: a peer flooding INFERs it then cancels (or
// that end in any other way) adds at most that many, and the other events
// cannot crowd them out. All told a remote peer causes at most
// remoteLinesTotal+remoteRequestLines = 20 lines a second.
const (
	remoteLinesPerEvent = 5
	remoteLinesTotal    = 15
	remoteRequestLines  = 5
)

// logSampler decides which remote-caused lines go out. Its map is bounded
// by the events named in the daemon's code.
type logSampler struct {
	mu     sync.Mutex
	second time.Time // start of the current one-second window
	total  int       // lines out in this window
	events map[string]*sampledEvent
}

type sampledEvent struct {
	out        int   // lines out in this window
	suppressed int64 // since the last line out
}

// take reports whether a line of event may go out now, and how many of its
// lines were suppressed before it.
func (l *logSampler) take(event string, now time.Time) (ok bool, suppressed int64) {
	return l.takeWithin(event, now, remoteLinesPerEvent, remoteLinesTotal)
}

// takeWithin is take with the bounds given: perEvent lines a second of
// each event, total of all.
func (l *logSampler) takeWithin(event string, now time.Time, perEvent, total int) (ok bool, suppressed int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.second) >= time.Second || now.Before(l.second) {
		l.second, l.total = now, 0
		for _, e := range l.events {
			e.out = 0
		}
	}
	if l.events == nil {
		l.events = make(map[string]*sampledEvent)
	}
	e := l.events[event]
	if e == nil {
		e = &sampledEvent{}
		l.events[event] = e
	}
	if e.out >= perEvent || l.total >= total {
		e.suppressed++
		return false, 0
	}
	e.out++
	l.total++
	suppressed, e.suppressed = e.suppressed, 0
	return true, suppressed
}

// remoteLog writes a line a remote peer caused, at level, through the
// sampler (the event is the message).
func (d *Daemon) remoteLog(level slog.Level, msg string, args ...any) {
	ok, suppressed := d.sampler.take(msg, d.clock.Now())
	if !ok {
		d.stats.suppressed(msg)
		if d.log.Enabled(context.Background(), slog.LevelDebug) {
			d.log.Log(context.Background(), slog.LevelDebug, msg, args...)
		}
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	d.log.Log(context.Background(), level, msg, args...)
}
