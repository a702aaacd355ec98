package serialproto

import "unicode/utf8"

// replacement is U+FFFD, what invalid bytes become on the wire.
var replacement = []byte{0xEF, 0xBF, 0xBD}

// TextBuffer collects an engine's output bytes and hands them out in chunks
// that never split a UTF-8 character (docs/protocol.md §8.4): an incomplete
// trailing sequence waits for its continuation bytes, and bytes that can
// never be valid UTF-8 become U+FFFD. The zero value is ready to use.
type TextBuffer struct {
	buf []byte // pending bytes are buf[off:]
	off int
}

// Write appends p; it never fails.
func (t *TextBuffer) Write(p []byte) (int, error) {
	t.compact()
	t.buf = append(t.buf, p...)
	return len(p), nil
}

// WriteString appends s.
func (t *TextBuffer) WriteString(s string) (int, error) {
	t.compact()
	t.buf = append(t.buf, s...)
	return len(s), nil
}

// compact reclaims the consumed front once it is most of the buffer, so
// draining in small chunks stays linear.
func (t *TextBuffer) compact() {
	if t.off > 0 && t.off >= len(t.buf)/2 {
		t.buf = t.buf[:copy(t.buf, t.buf[t.off:])]
		t.off = 0
	}
}

// Len is the number of raw bytes not yet handed out.
func (t *TextBuffer) Len() int { return len(t.buf) - t.off }

// Next appends to dst at most limit bytes of complete, valid UTF-8 taken from
// the front of the buffer. Unless final is set, an incomplete character at
// the end stays buffered; with final set it is flushed as U+FFFD. The
// limit must be at least 4 (one character); smaller values are raised to 4 so the
// buffer always drains.
func (t *TextBuffer) Next(dst []byte, limit int, final bool) []byte {
	limit = max(limit, utf8.UTFMax)
	pending := t.buf[t.off:]
	used, i := 0, 0
	for i < len(pending) {
		r, size := utf8.DecodeRune(pending[i:])
		out := size
		if r == utf8.RuneError && size == 1 {
			if !final && !utf8.FullRune(pending[i:]) {
				break // the start of a character whose rest has not arrived
			}
			out = len(replacement)
		}
		if used+out > limit {
			break
		}
		if out == size {
			dst = append(dst, pending[i:i+size]...)
		} else {
			dst = append(dst, replacement...)
		}
		used += out
		i += size
	}
	t.off += i
	if t.off == len(t.buf) { // drained: reuse the whole buffer
		t.buf, t.off = t.buf[:0], 0
	}
	return dst
}
