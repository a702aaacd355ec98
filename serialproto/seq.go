package serialproto

// SeqAfter reports whether a is after b in 8-bit serial-number arithmetic
// (RFC 1982): (a − b) mod 256 is in 1..127. docs/protocol.md §5.
func SeqAfter(a, b uint8) bool {
	d := a - b
	return d != 0 && d < 128
}
