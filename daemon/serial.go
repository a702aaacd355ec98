package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
	"go.bug.st/serial"
)

// SerialConfig is one configured serial port, or a glob of them
// ("/dev/ttyUSB*") so a device plugged in later is picked up.
type SerialConfig struct {
	Path     string
	Baud     int           // default 115200
	DataBits int           // default 8
	Parity   serial.Parity // default none
	StopBits serial.StopBits
}

// ParseSerial reads "PATH[:BAUD[:FRAMING]]", FRAMING like 8N1, 7E1, 8O2.
func ParseSerial(spec string) (SerialConfig, error) {
	parts := strings.Split(spec, ":")
	c := SerialConfig{Path: parts[0], Baud: 115200, DataBits: 8}
	if c.Path == "" || len(parts) > 3 {
		return c, fmt.Errorf("daemon: serial %q: want PATH[:BAUD[:8N1]]", spec)
	}
	if len(parts) > 1 {
		b, err := strconv.Atoi(parts[1])
		if err != nil || b < 50 || b > 4_000_000 {
			return c, fmt.Errorf("daemon: serial %q: baud %q is not a rate between 50 and 4000000", spec, parts[1])
		}
		c.Baud = b
	}
	if len(parts) > 2 {
		f := strings.ToUpper(parts[2])
		if len(f) != 3 || f[0] < '5' || f[0] > '8' || !strings.ContainsRune("NOE", rune(f[1])) || (f[2] != '1' && f[2] != '2') {
			return c, fmt.Errorf("daemon: serial %q: framing %q, want e.g. 8N1", spec, parts[2])
		}
		c.DataBits = int(f[0] - '0')
		c.Parity = map[byte]serial.Parity{'N': serial.NoParity, 'O': serial.OddParity, 'E': serial.EvenParity}[f[1]]
		if f[2] == '2' {
			c.StopBits = serial.TwoStopBits
		}
	}
	if _, err := filepath.Match(c.Path, ""); err != nil {
		return c, fmt.Errorf("daemon: serial %q: bad pattern: %w", spec, err)
	}
	return c, nil
}

// SerialLink serves the device on one port — or on every port a glob
// matches — and survives unplugging: a vanished port is closed and reopened
// with backoff when it returns, without touching other links.
type SerialLink struct {
	cfg  SerialConfig
	log  *slog.Logger
	scan time.Duration // how often a glob is re-read

	mu     sync.Mutex
	peers  map[string]*serialPeer // one per path, kept across replugs
	health map[string]*portHealth // one per path tried
	// globIdle: since when a glob has matched no port (zero: it matches).
	globIdle time.Time
}

// NewSerialLink returns a link for cfg.
func NewSerialLink(cfg SerialConfig, log *slog.Logger) *SerialLink {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &SerialLink{cfg: cfg, log: log, scan: time.Second, peers: map[string]*serialPeer{}, health: map[string]*portHealth{}}
}

// portHealth returns path's health record.
func (l *SerialLink) portHealth(path string) *portHealth {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.health[path]
	if h == nil {
		h = &portHealth{state: LinkState{Name: "serial:" + path}}
		l.health[path] = h
	}
	return h
}

// LinkStates reports each port the link has tried: up once open, down
// with the cause of the last failure. A glob that matches nothing yet is
// one entry, down, under the pattern's name.
func (l *SerialLink) LinkStates() []LinkState {
	l.mu.Lock()
	hs := make([]*portHealth, 0, len(l.health))
	for _, h := range l.health {
		hs = append(hs, h)
	}
	idle := l.globIdle
	l.mu.Unlock()
	var out []LinkState
	for _, h := range hs {
		out = append(out, h.get())
	}
	if len(out) == 0 {
		st := LinkState{Name: l.Name(), Error: "not opened yet", Since: idle}
		if isGlob(l.cfg.Path) {
			st.Error = "no port matches " + l.cfg.Path
			st.Hint = serialHint(fs.ErrNotExist)
		}
		out = append(out, st)
	}
	return out
}

// peer returns the path's peer. It outlives the port's handle: a session
// (and a stream in flight) survives unplugging and continues through
// retransmission once the port is back.
func (l *SerialLink) peer(path string) *serialPeer {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.peers[path]
	if p == nil {
		p = &serialPeer{name: "serial:" + path, baud: l.cfg.Baud}
		l.peers[path] = p
	}
	return p
}

func (l *SerialLink) Name() string { return "serial:" + l.cfg.Path }

func isGlob(p string) bool { return strings.ContainsAny(p, "*?[") }

// Run serves until ctx is done.
func (l *SerialLink) Run(ctx context.Context, h Handler) error {
	if !isGlob(l.cfg.Path) {
		l.keepOpen(ctx, l.cfg.Path, h)
		return nil
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	active := map[string]bool{}
	var mu sync.Mutex
	tick := time.NewTicker(l.scan)
	defer tick.Stop()
	warned := false
	for {
		matches, _ := filepath.Glob(l.cfg.Path) // the pattern was checked by ParseSerial
		l.mu.Lock()
		switch {
		case len(matches) > 0:
			l.globIdle, warned = time.Time{}, false
		case l.globIdle.IsZero():
			l.globIdle = time.Now()
		}
		l.mu.Unlock()
		if len(matches) == 0 && !warned {
			// Expected while nothing is plugged in: said once, not per scan.
			l.log.Warn("no serial port matches the pattern yet; watching for one", "pattern", l.cfg.Path,
				"hint", serialHint(fs.ErrNotExist))
			warned = true
		}
		for _, path := range matches {
			mu.Lock()
			if active[path] {
				mu.Unlock()
				continue
			}
			active[path] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				l.serve(ctx, path, h) // until unplugged: the next scan reopens it
				mu.Lock()
				delete(active, path)
				mu.Unlock()
			}()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// keepOpen serves one fixed path, reopening it with backoff (50 ms doubling
// to 2 s) whenever it disappears.
func (l *SerialLink) keepOpen(ctx context.Context, path string, h Handler) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		if l.serve(ctx, path, h) {
			backoff = 50 * time.Millisecond // it worked for a while: retry fast
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// serve opens path and reads frames until the port fails or ctx ends. It
// reports whether the port was opened at all.
func (l *SerialLink) serve(ctx context.Context, path string, h Handler) bool {
	health := l.portHealth(path)
	port, err := serial.Open(path, &serial.Mode{BaudRate: l.cfg.Baud, DataBits: l.cfg.DataBits, Parity: l.cfg.Parity, StopBits: l.cfg.StopBits})
	if err != nil {
		// One WARN per cause, then quiet retries: a port left unplugged
		// must not fill the journal, and the cause must not hide at debug.
		if news, hint := health.failed(time.Now(), err); news {
			l.log.Warn("serial port cannot be opened; retrying quietly", "port", path, "err", openCause(err), "hint", hint)
		} else {
			l.log.Debug("serial port not available", "port", path, "err", err)
		}
		return false
	}
	// A short read timeout lets the decoder see a quiet line (§7.1 step 5);
	// 20 ms also covers USB-serial bridges' latency timers.
	if err := port.SetReadTimeout(max(20*time.Millisecond, 50*time.Duration(float64(time.Second)/float64(l.cfg.Baud)))); err != nil {
		port.Close()
		l.log.Warn("serial port refuses a read timeout", "port", path, "err", err)
		return true
	}
	p := l.peer(path)
	if p.attach(port) {
		h.LinkStats(p.name, 0, 1)
	}
	stop := context.AfterFunc(ctx, func() { p.detach(port) })
	defer stop()
	defer p.detach(port)
	health.opened(time.Now())
	l.log.Info("serial port open", "port", path, "baud", l.cfg.Baud)
	dec := serialproto.NewDecoder(port)
	var skipped int64 // reported so far
	for {
		f, err := dec.Next()
		if n := dec.Stats().Skipped; n != skipped {
			h.LinkStats(p.name, n-skipped, 0)
			skipped = n
		}
		var rerr *serialproto.ReadError
		switch {
		case err == nil:
			h.HandleFrame(p, f)
		case errors.As(err, &rerr):
			h.HandleBadFrame(p, rerr)
		case errors.Is(err, serialproto.ErrIdle):
		default:
			if ctx.Err() == nil {
				health.lost(time.Now(), err)
				l.log.Warn("serial port lost; will reopen", "port", path, "err", err)
			}
			return true
		}
	}
}

// serialRTO is docs/protocol.md §7.1's 2 × window × T(263) + 100 ms, window
// being the device's (its HELLO's): the chunks the daemon may have queued
// on the line ahead of the device's answer. (The WELCOME's window, 255, is
// reserved and enters no timer.)
func serialRTO(baud, window int) time.Duration {
	frame := time.Duration(float64(serialproto.MaxFrameLen*10) / float64(baud) * float64(time.Second))
	return 2*time.Duration(max(window, 1))*frame + 100*time.Millisecond
}

type serialPeer struct {
	name string
	baud int

	writeMu  sync.Mutex // one frame at a time on the wire
	lineFree time.Time  // when the line will have sent what was written (guarded by writeMu)
	mu       sync.Mutex // guards port, opened
	port     serial.Port
	opened   bool // the port was open before: a later attach is a reconnect
}

func (p *serialPeer) Key() string                  { return p.name }
func (p *serialPeer) LinkName() string             { return p.name }
func (p *serialPeer) Addr() netip.AddrPort         { return netip.AddrPort{} } // a port has no source address
func (p *serialPeer) ByteStream() bool             { return true }
func (p *serialPeer) BoundDevice() string          { return "" }
func (p *serialPeer) RTO(window int) time.Duration { return serialRTO(p.baud, window) }

var errUnplugged = errors.New("daemon: serial port is not connected")

func (p *serialPeer) Send(frame []byte) error {
	p.mu.Lock()
	port := p.port
	p.mu.Unlock()
	if port == nil {
		return errUnplugged // lost; the stream retransmits after the replug
	}
	p.writeMu.Lock()
	defer p.writeMu.Unlock()
	p.pace(frame)
	_, err := port.Write(frame)
	return err
}

// pace holds an answer chunk back while more than two full frames are
// already waiting for the line, and notes how long frame will take there.
// A port's driver takes kilobytes at once, so without it a window of
// chunks would queue in the driver, and a chunk resent to repair a hole
// would wait behind all of them: the device's window would close on the
// hole and the line fall idle. Paced, a retransmission goes out within two
// frame times, and the round trips the stream measures are the line's.
// Control frames (ACK, PONG, ...) are never held back; they count.
func (p *serialPeer) pace(frame []byte) {
	now := time.Now()
	perByte := 10 * time.Second / time.Duration(p.baud) // 8N1
	backlog := 2 * serialproto.MaxFrameLen * perByte
	if len(frame) > 4 {
		switch serialproto.Command(frame[4] & 0x3F) {
		case serialproto.CmdToken, serialproto.CmdDone:
			if wait := p.lineFree.Sub(now) - backlog; wait > 0 {
				time.Sleep(wait)
				now = time.Now()
			}
		}
	}
	if p.lineFree.Before(now) {
		p.lineFree = now // the line has drained
	}
	p.lineFree = p.lineFree.Add(time.Duration(len(frame)) * perByte)
}

// attach uses port from now on; it reports whether this is a reconnect.
func (p *serialPeer) attach(port serial.Port) (reconnect bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.port = port
	reconnect, p.opened = p.opened, true
	return reconnect
}

// detach closes port (once) and forgets it. It never waits for a writer:
// closing is what unblocks a write stuck on a dead line.
func (p *serialPeer) detach(port serial.Port) {
	p.mu.Lock()
	if p.port == port {
		p.port = nil
	}
	p.mu.Unlock()
	_ = port.Close() // closing twice returns an error, harmlessly
}
