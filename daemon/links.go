package daemon

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// linkSet is the links being served and the context they run under, from
// Run's start until its drain is over.
type linkSet struct {
	started chan struct{} // closed once Run serves its links
	errs    chan error    // the first link that fails for good ends Run

	mu      sync.Mutex
	ctx     context.Context // nil before Run
	running map[string]*runningLink
}

// runningLink is a link being served.
type runningLink struct {
	link   Link
	cancel context.CancelFunc
	done   chan struct{} // closed when the link's Run has returned
	since  time.Time     // when it started being served
}

func newLinkSet() linkSet {
	return linkSet{started: make(chan struct{}), errs: make(chan error, 1), running: make(map[string]*runningLink)}
}

// begin sets the context links run under (Run calls it once).
func (ls *linkSet) begin(ctx context.Context) {
	ls.mu.Lock()
	ls.ctx = ctx
	ls.mu.Unlock()
}

// context is what sessions and links live under: nil before Run, done once
// Run's drain is over.
func (ls *linkSet) context() context.Context {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.ctx
}

// serving reports whether Run is serving (it may be draining).
func (ls *linkSet) serving() bool {
	ctx := ls.context()
	return ctx != nil && ctx.Err() == nil
}

// names returns the running links' names, sorted.
func (ls *linkSet) names() []string {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	names := make([]string, 0, len(ls.running))
	for n := range ls.running {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// AddLink starts serving l while the daemon runs (Run calls it for the
// links it is given). A link's name must be unique among the running ones.
// A link that fails for good ends Run, as one given to Run does.
func (d *Daemon) AddLink(l Link) error {
	ls := &d.links
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.ctx == nil || ls.ctx.Err() != nil || d.admission.isDraining() {
		return ErrNotRunning
	}
	name := l.Name()
	if _, dup := ls.running[name]; dup {
		return fmt.Errorf("daemon: link %s is already served", name)
	}
	ctx, cancel := context.WithCancel(ls.ctx)
	rl := &runningLink{link: l, cancel: cancel, done: make(chan struct{}), since: d.clock.Now()}
	ls.running[name] = rl
	go func() {
		defer close(rl.done)
		err := l.Run(ctx, d)
		if ctx.Err() != nil {
			return // removed, or the daemon is stopping
		}
		if err != nil {
			d.log.Error("link failed", "link", name, "err", err)
		}
		select { // the first one ends Run
		case ls.errs <- err:
		default:
		}
	}()
	// Serving, not necessarily up: a serial link says when its port opens
	// (or why it does not); LinkStates tells.
	if u, ok := l.(*UDPLink); ok && u.rcvbuf > 0 {
		d.log.Info("serving link", "link", name, "receive_buffer", u.rcvbuf)
		if u.rcvbuf < 2*UDPReceiveBuffer { // the kernel reports twice what it granted
			d.log.Warn("UDP receive buffer smaller than mcpd asks for: a flood fills it sooner and the kernel then drops every device's datagrams alike (raise net.core.rmem_max, or ReceiveBuffer= in the socket unit)",
				"link", name, "receive_buffer", u.rcvbuf, "asked", UDPReceiveBuffer)
		}
		return nil
	}
	d.log.Info("serving link", "link", name)
	return nil
}

// RemoveLink stops serving the named link, waits (up to ctx) until it has
// let go of its socket or port, and closes the sessions of the devices that
// came through it; their requests end. Other links' sessions are untouched.
func (d *Daemon) RemoveLink(ctx context.Context, name string) error {
	ls := &d.links
	ls.mu.Lock()
	rl := ls.running[name]
	delete(ls.running, name)
	ls.mu.Unlock()
	if rl == nil {
		return fmt.Errorf("daemon: no link %s", name)
	}
	rl.cancel()
	select {
	case <-rl.done:
	case <-ctx.Done():
		return fmt.Errorf("daemon: link %s did not stop: %w", name, ctx.Err())
	}
	gone := d.sessions.filter(func(s *session) bool { return rl.link.Owns(s.peer.Key()) })
	for _, s := range gone {
		s.close(errSessionClosed)
	}
	d.log.Info("link down", "link", name, "sessions_closed", len(gone))
	return nil
}

// Started is closed once Run has started serving every link it was given:
// UDP sockets are bound and reading, serial ports are being opened.
func (d *Daemon) Started() <-chan struct{} { return d.links.started }

// Links returns the names of the links being served, sorted.
func (d *Daemon) Links() []string { return d.links.names() }

// Close releases the socket of a link that is not served (Run closes it
// when its context ends).
func (l *UDPLink) Close() error { return l.conn.Close() }

// Owns reports whether a session key belongs to a device on this socket.
func (l *UDPLink) Owns(peerKey string) bool { return strings.HasPrefix(peerKey, l.name+"|") }

// Owns reports whether a session key belongs to a port this link opened
// (for a glob, any port it matched).
func (l *SerialLink) Owns(peerKey string) bool {
	path, ok := strings.CutPrefix(peerKey, "serial:")
	if !ok {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.peers[path] != nil
}
