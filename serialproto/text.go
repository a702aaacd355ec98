package serialproto

import "unicode/utf8"

// replacement is U+FFFD, what invalid bytes become on the wire.
var replacement = []byte{0xEF, 0xBF, 0xBD}

// TextBuffer collects an engine's output bytes and hands them out in chunks
// that never split a UTF-8 character (docs/protocol.md §8.4): an incomplete
// trailing sequence waits for its continuation bytes, and bytes that can
// never be valid UTF-8 become U+FFFD. The zero value is ready to use.
type TextBuffer struct {
	pending []byte
}

// Write appends p; it never fails.
func (t *TextBuffer) Write(p []byte) (int, error) {
	t.pending = append(t.pending, p...)
	return len(p), nil
}

// WriteString appends s.
func (t *TextBuffer) WriteString(s string) (int, error) {
	t.pending = append(t.pending, s...)
	return len(s), nil
}

// Len is the number of raw bytes not yet handed out.
func (t *TextBuffer) Len() int { return len(t.pending) }

// Next appends to dst at most max bytes of complete, valid UTF-8 taken from
// the front of the buffer. Unless final is set, an incomplete character at
// the end stays buffered; with final set it is flushed as U+FFFD. max must
// be at least 4 (one character).
func (t *TextBuffer) Next(dst []byte, max int, final bool) []byte {
	used, i := 0, 0
	for i < len(t.pending) {
		r, size := utf8.DecodeRune(t.pending[i:])
		out := size
		if r == utf8.RuneError && size == 1 {
			if !final && !utf8.FullRune(t.pending[i:]) {
				break // the start of a character whose rest has not arrived
			}
			out = len(replacement)
		}
		if used+out > max {
			break
		}
		if out == size {
			dst = append(dst, t.pending[i:i+size]...)
		} else {
			dst = append(dst, replacement...)
		}
		used += out
		i += size
	}
	// Shift the rest to the front; the buffer's capacity is reused.
	t.pending = t.pending[:copy(t.pending, t.pending[i:])]
	return dst
}
