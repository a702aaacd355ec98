package serialproto

import "hash/crc32"

// CRC-8/AUTOSAR: poly 0x2F, init 0xFF, no reflection, xorout 0xFF,
// check("123456789") = 0xDF. docs/protocol.md §2.3 explains the choice.
const (
	crc8Poly   = 0x2F
	crc8Init   = 0xFF
	crc8XorOut = 0xFF
)

// crc8Tables are computed once and never written again. crc8Tables[0] is
// the classic byte-at-a-time table; crc8Tables[k][x] is the register after
// x is followed by k zero bytes, which lets crc8Update fold eight bytes per
// step with independent lookups ("slicing-by-8").
var crc8Tables = func() (t [8][256]byte) {
	for i := range t[0] {
		c := byte(i)
		for range 8 {
			if c&0x80 != 0 {
				c = c<<1 ^ crc8Poly
			} else {
				c <<= 1
			}
		}
		t[0][i] = c
	}
	for k := 1; k < 8; k++ {
		for i := range t[k] {
			t[k][i] = t[0][t[k-1][i]]
		}
	}
	return t
}()

// CRC8 returns the CRC-8/AUTOSAR of p, the checksum that guards every frame.
func CRC8(p []byte) byte {
	return crc8Update(crc8Init, p) ^ crc8XorOut
}

// crc8Update feeds p into a running (not yet finalised) CRC register.
func crc8Update(c byte, p []byte) byte {
	t := &crc8Tables
	for len(p) >= 8 {
		c = t[7][c^p[0]] ^ t[6][p[1]] ^ t[5][p[2]] ^ t[4][p[3]] ^
			t[3][p[4]] ^ t[2][p[5]] ^ t[1][p[6]] ^ t[0][p[7]]
		p = p[8:]
	}
	for _, b := range p {
		c = t[0][c^b]
	}
	return c
}

// castagnoli is the CRC-32C table; read-only after package initialisation.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CRC32C returns the CRC-32C (Castagnoli) of p, the checksum that guards every
// reassembled multi-frame message and every token stream.
func CRC32C(p []byte) uint32 { return crc32.Checksum(p, castagnoli) }

// UpdateCRC32C continues a CRC-32C computation: UpdateCRC32C(CRC32C(a), b)
// equals CRC32C(append(a, b...)). Start with crc = 0.
func UpdateCRC32C(crc uint32, p []byte) uint32 { return crc32.Update(crc, castagnoli, p) }
