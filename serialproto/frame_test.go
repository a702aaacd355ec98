package serialproto

import (
	"bytes"
	"errors"
	"testing"
)

func TestCRC8Check(t *testing.T) {
	// The catalogue check value of CRC-8/AUTOSAR.
	if got := CRC8([]byte("123456789")); got != 0xDF {
		t.Fatalf("CRC8(123456789) = %#02x, want 0xdf", got)
	}
	if got := CRC32C([]byte("123456789")); got != 0xE3069283 {
		t.Fatalf("CRC32C(123456789) = %#08x, want 0xe3069283", got)
	}
}

func TestFrameRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 255, 256} {
		f := Frame{Version: Version1, Cmd: CmdToken, Flags: FlagSigned, Seq: 200, Data: bytes.Repeat([]byte{0x55}, n)}
		b, err := AppendFrame(nil, f)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != Overhead+n {
			t.Fatalf("len %d, want %d", len(b), Overhead+n)
		}
		g, err := Decode(b)
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		if g.Version != f.Version || g.Cmd != f.Cmd || g.Flags != f.Flags || g.Seq != f.Seq || !bytes.Equal(g.Data, f.Data) {
			t.Fatalf("n=%d: got %v want %v", n, g, f)
		}
	}
	if _, err := AppendFrame(nil, Frame{Cmd: CmdPing, Data: make([]byte, 257)}); !errors.Is(err, ErrDataTooLarge) {
		t.Fatalf("257 bytes: err %v", err)
	}
}
