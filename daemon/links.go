package daemon

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// runningLink is a link being served.
type runningLink struct {
	link   Link
	cancel context.CancelFunc
	done   chan struct{} // closed when the link's Run has returned
}

// AddLink starts serving l while the daemon runs (Run calls it for the
// links it is given). A link's name must be unique among the running ones.
// A link that fails for good ends Run, as one given to Run does.
func (d *Daemon) AddLink(l Link) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.linkCtx == nil || d.linkCtx.Err() != nil || d.draining.Load() {
		return ErrNotRunning
	}
	name := l.Name()
	if _, dup := d.links[name]; dup {
		return fmt.Errorf("daemon: link %s is already served", name)
	}
	ctx, cancel := context.WithCancel(d.linkCtx)
	rl := &runningLink{link: l, cancel: cancel, done: make(chan struct{})}
	d.links[name] = rl
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
		case d.linkErrs <- err:
		default:
		}
	}()
	d.log.Info("link up", "link", name)
	return nil
}

// RemoveLink stops serving the named link, waits (up to ctx) until it has
// let go of its socket or port, and closes the sessions of the devices that
// came through it; their requests end. Other links' sessions are untouched.
func (d *Daemon) RemoveLink(ctx context.Context, name string) error {
	d.mu.Lock()
	rl := d.links[name]
	delete(d.links, name)
	d.mu.Unlock()
	if rl == nil {
		return fmt.Errorf("daemon: no link %s", name)
	}
	rl.cancel()
	select {
	case <-rl.done:
	case <-ctx.Done():
		return fmt.Errorf("daemon: link %s did not stop: %w", name, ctx.Err())
	}
	var gone []*session
	d.mu.Lock()
	for key, s := range d.sessions {
		if rl.link.Owns(key) {
			gone = append(gone, s)
		}
	}
	d.mu.Unlock()
	for _, s := range gone {
		s.close(errSessionClosed)
	}
	d.log.Info("link down", "link", name, "sessions_closed", len(gone))
	return nil
}

// Started is closed once Run has started serving every link it was given:
// UDP sockets are bound and reading, serial ports are being opened.
func (d *Daemon) Started() <-chan struct{} { return d.started }

// Links returns the names of the links being served, sorted.
func (d *Daemon) Links() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.linkNamesLocked()
}

// linkNamesLocked is Links with d.mu held.
func (d *Daemon) linkNamesLocked() []string {
	names := make([]string, 0, len(d.links))
	for n := range d.links {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

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
