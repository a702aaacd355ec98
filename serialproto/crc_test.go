package serialproto

import (
	"math/rand/v2"
	"testing"
)

// crc8Bitwise is the bit-by-bit CRC-8/AUTOSAR of docs/protocol.md §2.3, an
// oracle for the table-driven CRC8.
func crc8Bitwise(p []byte) byte {
	c := byte(0xFF)
	for _, b := range p {
		c ^= b
		for range 8 {
			if c&0x80 != 0 {
				c = c<<1 ^ 0x2F
			} else {
				c <<= 1
			}
		}
	}
	return c ^ 0xFF
}

// crc8Bytewise is the classic one-table CRC, the baseline for slicing-by-8.
func crc8Bytewise(p []byte) byte {
	c := byte(crc8Init)
	for _, b := range p {
		c = crc8Tables[0][c^b]
	}
	return c ^ crc8XorOut
}

func TestCRC8MatchesBitwise(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for n := range 300 {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(r.IntN(256))
		}
		if CRC8(p) != crc8Bitwise(p) || crc8Bytewise(p) != crc8Bitwise(p) {
			t.Fatalf("len %d: table %#02x, bitwise %#02x", n, CRC8(p), crc8Bitwise(p))
		}
	}
}

func TestCRC32CIncremental(t *testing.T) {
	a, b := []byte("Hello, "), []byte("world")
	if UpdateCRC32C(CRC32C(a), b) != CRC32C(append(a, b...)) {
		t.Fatal("UpdateCRC32C does not continue CRC32C")
	}
}

// syndromes returns x^i mod g for the codeword bit positions: an error
// pattern goes undetected exactly when the XOR of its syndromes is zero.
func crc8Syndromes(n int) []byte {
	s := make([]byte, n)
	r := uint16(1)
	for i := range s {
		s[i] = byte(r)
		r <<= 1
		if r&0x100 != 0 {
			r ^= 0x100 | crc8Poly
		}
	}
	return s
}

// TestCRC8Properties verifies the claims of docs/protocol.md §2.3 about
// polynomial 0x2F: Hamming distance 4 up to 119 data bits (all 1-, 2- and
// 3-bit errors caught) but not at 120, every odd-weight error caught (x+1
// divides it), and the share of undetected 2-bit errors in a full frame.
func TestCRC8Properties(t *testing.T) {
	undetected := func(n, weight int) bool { // any undetected error of this weight in n codeword bits?
		s := crc8Syndromes(n)
		switch weight {
		case 2:
			seen := map[byte]bool{}
			for _, v := range s {
				if seen[v] {
					return true
				}
				seen[v] = true
			}
		case 3:
			pos := map[byte]int{} // last position of each syndrome
			for i, v := range s {
				pos[v] = i
			}
			for i := range n {
				for j := i + 1; j < n; j++ {
					if k, ok := pos[s[i]^s[j]]; ok && k > j {
						return true
					}
				}
			}
		}
		return false
	}
	if undetected(119+8, 2) || undetected(119+8, 3) {
		t.Fatal("an error of weight ≤ 3 goes undetected at 119 data bits")
	}
	if !undetected(120+8, 2) {
		t.Fatal("HD 4 claimed to end at 119 data bits, but holds at 120")
	}
	// (x+1) | g  ⇔  g(1) = 0  ⇔  an even number of terms.
	if terms := bitsSet(0x100 | crc8Poly); terms%2 != 0 {
		t.Fatalf("polynomial has %d terms: not divisible by x+1", terms)
	}
	// Undetected 2-bit errors in a 263-byte frame: pairs at a distance that
	// is a multiple of the period 127.
	const bits = MaxFrameLen * 8
	s := crc8Syndromes(bits)
	var und, all int
	for i := range bits {
		for j := i + 1; j < bits; j++ {
			all++
			if s[i] == s[j] {
				und++
			}
		}
	}
	if share := float64(und) / float64(all); share < 0.0073 || share > 0.0075 {
		t.Fatalf("undetected 2-bit share %.4f%%, spec says 0.74%%", 100*share)
	}
}

func bitsSet(v uint16) int {
	n := 0
	for ; v != 0; v &= v - 1 {
		n++
	}
	return n
}

func TestSeqAfter(t *testing.T) {
	for _, tc := range []struct {
		a, b uint8
		want bool
	}{
		{1, 0, true}, {0, 0, false}, {0, 1, false}, {0, 255, true}, {127, 0, true},
		{128, 0, false}, {5, 250, true}, {250, 5, false},
	} {
		if got := SeqAfter(tc.a, tc.b); got != tc.want {
			t.Errorf("SeqAfter(%d, %d) = %v", tc.a, tc.b, got)
		}
	}
}
