package device

import (
	"io"
	"os"
	"sync"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// Replug is a device's side of a serial cable that can be pulled and
// plugged back, for tests of unplugged ports: it forwards to the current
// Stream, sends into the void and hears nothing while unplugged, as a UART
// with no cable does.
type Replug struct {
	mu sync.Mutex
	s  *Stream
}

// NewReplug starts plugged into s.
func NewReplug(s *Stream) *Replug { return &Replug{s: s} }

func (r *Replug) cur() *Stream {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.s
}

// Unplug pulls the cable and returns the stream it was plugged into.
func (r *Replug) Unplug() *Stream {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.s
	r.s = nil
	return old
}

// Plug plugs the cable into s.
func (r *Replug) Plug(s *Stream) {
	r.mu.Lock()
	r.s = s
	r.mu.Unlock()
}

// Send writes to the stream plugged in; unplugged, the frame is lost.
func (r *Replug) Send(f []byte) error {
	if s := r.cur(); s != nil {
		return s.Send(f)
	}
	return nil
}

// Recv waits for a frame until deadline, across unplugging: it polls the
// current stream in short steps so a stream plugged in meanwhile is heard.
func (r *Replug) Recv(deadline time.Time) (serialproto.Frame, error) {
	for {
		s := r.cur()
		if s == nil {
			if time.Now().After(deadline) {
				return serialproto.Frame{}, os.ErrDeadlineExceeded
			}
			time.Sleep(5 * time.Millisecond)
			continue
		}
		step := time.Now().Add(20 * time.Millisecond)
		if deadline.Before(step) {
			step = deadline
		}
		f, err := s.Recv(step)
		if err == nil || time.Now().After(deadline) {
			return f, err
		}
	}
}

// lastCorrupt is the plugged stream's (zero while unplugged).
func (r *Replug) lastCorrupt() time.Time {
	if s := r.cur(); s != nil {
		return s.lastCorrupt()
	}
	return time.Time{}
}

// Close leaves the streams to their owner.
func (r *Replug) Close() error { return nil }

// ReplugAt pulls the cable, closes the old stream and removes link, waits
// pause, then plugs a new port in at the same link — as a USB adapter
// re-enumerates behind a udev /dev/serial/by-id link. open returns the new
// port's device side and its path; a failed symlink is returned.
func (r *Replug) ReplugAt(link string, pause time.Duration, open func() (io.ReadWriteCloser, string)) error {
	if old := r.Unplug(); old != nil {
		old.Close()
	}
	os.Remove(link)
	time.Sleep(pause)
	port, path := open()
	if err := os.Symlink(path, link); err != nil {
		return err
	}
	r.Plug(NewStream(port))
	return nil
}
