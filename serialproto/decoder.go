package serialproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrIdle is returned by Decoder.Next when the reader returned no bytes and
// no error — what go.bug.st/serial does when its read timeout expires on a
// quiet line — or a timeout error (a net.Conn's read deadline). The decoder
// has abandoned every incomplete frame candidate (the line went quiet in
// the middle of it, so it was garbage or truncated), delivered any complete
// frame found behind them, and keeps its state: call Next again.
var ErrIdle = errors.New("serialproto: line idle")

// ReadError is a non-fatal decoding error: the decoder has already resumed
// scanning one byte after the false magic, so the caller logs or counts it
// (a byte-stream link answers a bad CRC with a NACK) and calls Next again.
// The *ReadError Next returns belongs to the decoder and is valid until the
// next call, like a frame's Data: a noisy line rejects candidates by the
// hundred, and none of them may cost an allocation. Copy it to keep it.
type ReadError struct {
	Err    error // ErrBadCRC or ErrTooLong
	Offset int64 // stream offset of the rejected magic byte
}

func (e *ReadError) Error() string {
	return fmt.Sprintf("serialproto: stream offset %d: %v", e.Offset, e.Err)
}

func (e *ReadError) Unwrap() error { return e.Err }

// DecoderStats counts what a Decoder saw. Every byte read is in exactly one
// of: a returned frame, Skipped, or the decoder's pending buffer.
type DecoderStats struct {
	Bytes     int64 // bytes read from the reader
	Frames    int64 // frames returned
	Skipped   int64 // bytes discarded while resynchronising
	BadCRC    int64 // candidates rejected for their CRC
	TooLong   int64 // candidates rejected for a length field > 256
	Abandoned int64 // incomplete candidates dropped at idle or EOF
}

// decoderBufSize holds several maximal frames so that a read fetches many
// small frames at once and the rescan after a false magic never needs more
// bytes than the buffer holds.
const decoderBufSize = 4 * MaxFrameLen

// Decoder reads frames from a byte stream (serial line, pty, pipe) and
// resynchronises after garbage. The resync rule (docs/protocol.md §7.1):
// scan for the magic, bound-check the length, verify the CRC; on any failure
// restart the scan at the byte after that magic, so a real frame that starts
// inside a false one is never lost.
//
// A Decoder is not safe for concurrent use; it starts no goroutines.
type Decoder struct {
	r          io.Reader
	buf        []byte
	start, end int   // pending bytes are buf[start:end]
	base       int64 // stream offset of buf[0]
	eof        error // sticky error from the reader, reported once the buffer drains
	idle       bool  // the last read brought nothing: drain candidates, then report ErrIdle
	stats      DecoderStats
	rejected   ReadError // what Next returns for a rejected candidate, reused
}

// NewDecoder returns a Decoder reading from r.
func NewDecoder(r io.Reader) *Decoder {
	return &Decoder{r: r, buf: make([]byte, decoderBufSize)}
}

// Stats returns the counters so far.
func (d *Decoder) Stats() DecoderStats { return d.stats }

// Offset is the stream offset of the first byte not yet consumed: right
// after Next returns frame f, f began at Offset() − f.Len().
func (d *Decoder) Offset() int64 { return d.base + int64(d.start) }

// Buffered returns how many bytes wait in the decoder, not yet classified.
func (d *Decoder) Buffered() int { return d.end - d.start }

// Next returns the next frame whose structure and CRC are sound. Its Data
// aliases the decoder's buffer until the next call. Errors:
//   - *ReadError: a rejected candidate (the decoder's, valid until the next
//     call); non-fatal, call again;
//   - ErrIdle: the reader returned (0, nil); non-fatal, call again;
//   - the reader's error (io.EOF, a closed port) once no complete frame is
//     left in the buffer; bytes still pending then are counted as skipped.
func (d *Decoder) Next() (Frame, error) {
	for {
		// 1. Find the magic; everything before it is line noise.
		if i := bytes.IndexByte(d.buf[d.start:d.end], Magic); i < 0 {
			d.skip(d.end - d.start)
		} else {
			d.skip(i)
		}
		avail := d.end - d.start
		if avail >= HeaderLen {
			n := int(binary.BigEndian.Uint16(d.buf[d.start+2:]))
			if n > MaxData {
				d.stats.TooLong++
				return Frame{}, d.reject(ErrTooLong)
			}
			if total := Overhead + n; avail >= total {
				f, _, err := decodePrefix(d.buf[d.start : d.start+total])
				if err != nil { // only ErrBadCRC is possible here
					d.stats.BadCRC++
					return Frame{}, d.reject(err)
				}
				d.start += total
				d.stats.Frames++
				return f, nil
			}
		}
		// 2. The candidate (if any) is incomplete. At the end of the input or
		// on a quiet line no more bytes are coming for it: abandon it and
		// rescan from the byte after its magic, until the buffer holds no
		// candidate (§7.1 step 5).
		if d.eof != nil || d.idle {
			if avail > 0 {
				d.stats.Abandoned++
				d.skip(1)
				continue
			}
			if d.eof != nil {
				return Frame{}, d.eof
			}
			d.idle = false
			return Frame{}, ErrIdle
		}
		d.compact()
		n, err := d.r.Read(d.buf[d.end:])
		d.end += n
		d.stats.Bytes += int64(n)
		switch {
		case err != nil && isTimeout(err):
			d.idle = true // a read deadline on a quiet line, as from a net.Conn
		case err != nil:
			d.eof = err
		case n == 0:
			d.idle = true
		}
	}
}

// isTimeout reports a read that ended for its deadline, which means a quiet
// line, not a broken one. The end of the input is answered first: errors.As
// allocates its target, and every stream ends in io.EOF.
func isTimeout(err error) bool {
	if errors.Is(err, io.EOF) {
		return false
	}
	var t interface{ Timeout() bool }
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &t) && t.Timeout()
}

// reject drops the magic of a failed candidate and reports it in the
// decoder's own ReadError, so a rejection allocates nothing.
func (d *Decoder) reject(err error) error {
	d.rejected = ReadError{Err: err, Offset: d.base + int64(d.start)}
	d.skip(1)
	return &d.rejected
}

func (d *Decoder) skip(n int) {
	d.start += n
	d.stats.Skipped += int64(n)
}

// compact moves pending bytes to the front so a read has room.
func (d *Decoder) compact() {
	if d.start == 0 {
		return
	}
	d.base += int64(d.start)
	d.end = copy(d.buf, d.buf[d.start:d.end])
	d.start = 0
}
