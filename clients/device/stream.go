package device

import (
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// Stream is a Transport over a byte stream — a serial port, a pty — decoded
// with the resync rule by a reader goroutine.
type Stream struct {
	rw     io.ReadWriteCloser
	frames chan []byte
	done   chan struct{}

	mu  sync.Mutex
	err error // why the reader stopped

	writeMu  sync.Mutex
	lastNack time.Time    // only the reader goroutine touches it
	corrupt  atomic.Int64 // unix ns of the last frame that failed its CRC, 0 before any
}

// NewStream starts reading rw. A reader that returns (0, nil) or timeout
// errors when the line is quiet (go.bug.st/serial with a read timeout) is
// fine: the decoder treats that as idle.
func NewStream(rw io.ReadWriteCloser) *Stream {
	s := &Stream{rw: rw, frames: make(chan []byte, 64), done: make(chan struct{})}
	go s.read()
	return s
}

func (s *Stream) read() {
	defer close(s.done)
	dec := serialproto.NewDecoder(s.rw)
	for {
		f, err := dec.Next()
		var rerr *serialproto.ReadError
		switch {
		case err == nil:
			raw, _ := serialproto.AppendFrame(nil, f) // a copy: the decoder reuses its buffer
			select {
			case s.frames <- raw:
			default: // a device that does not keep up loses frames, as on a UART
			}
		case errors.As(err, &rerr):
			s.corrupt.Store(time.Now().UnixNano())
			s.nackBadFrame()
		case errors.Is(err, serialproto.ErrIdle):
		default:
			s.mu.Lock()
			s.err = err
			s.mu.Unlock()
			return
		}
	}
}

// nackBadFrame tells the daemon a frame arrived corrupt, so it retransmits
// now instead of at its timeout (§7.1) — at most once per 50 ms.
func (s *Stream) nackBadFrame() {
	if time.Since(s.lastNack) < 50*time.Millisecond {
		return
	}
	s.lastNack = time.Now()
	body, _ := (&serialproto.Nack{Reason: serialproto.NackBadFrame}).AppendBody(nil)
	frame, _ := serialproto.AppendFrame(nil, serialproto.Frame{Version: serialproto.Version1, Cmd: serialproto.CmdNack, Data: body})
	_ = s.Send(frame)
}

// Send writes one encoded frame; concurrent Sends do not interleave.
func (s *Stream) Send(frame []byte) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	_, err := s.rw.Write(frame)
	return err
}

// Recv returns the next sound frame decoded from the stream before
// deadline: os.ErrDeadlineExceeded when none came, the read error once the
// stream has ended.
func (s *Stream) Recv(deadline time.Time) (serialproto.Frame, error) {
	select { // frames already read come before the reader's end
	case raw := <-s.frames:
		return serialproto.Decode(raw)
	default:
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case raw := <-s.frames:
		return serialproto.Decode(raw)
	case <-s.done:
		s.mu.Lock()
		defer s.mu.Unlock()
		return serialproto.Frame{}, s.err
	case <-timer.C:
		return serialproto.Frame{}, os.ErrDeadlineExceeded
	}
}

// lastCorrupt is when a frame last arrived corrupt (zero: never): on a
// cable only the daemon sends, so the daemon is talking and the line
// mangles it.
func (s *Stream) lastCorrupt() time.Time {
	if ns := s.corrupt.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// Close closes the underlying stream, which ends the reader.
func (s *Stream) Close() error { return s.rw.Close() }
