package stateheader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"
)

var (
	errMagic     = errors.New("magic")
	errVersion   = errors.New("version")
	errCorrupt   = errors.New("corrupt")
	errTruncated = errors.New("truncated")
	testErrors   = Errors{Magic: errMagic, Version: errVersion, Corrupt: errCorrupt, Truncated: errTruncated}
)

func TestReadEncode(t *testing.T) {
	h := Header{Records: 3, Identity: [32]byte{1, 2, 3}, Own: [12]byte{9, 8}}
	good := Encode("TESTHDR\x00", 2, h)
	patch := func(i int, v byte) []byte {
		b := bytes.Clone(good)
		b[i] = v
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
		size int64
		want error
	}{
		{"good", good, Size, nil},
		{"short file", good, Size - 1, errTruncated},
		{"short read", good[:Size-1], Size, errTruncated},
		{"other magic", patch(0, 'X'), Size, errMagic},
		{"other version", patch(8, 3), Size, errVersion},
		{"bit flipped", patch(20, good[20]^1), Size, errCorrupt},
		{"CRC flipped", patch(63, good[63]^1), Size, errCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Read(bytes.NewReader(tc.b), tc.size, "TESTHDR\x00", 2, testErrors)
			if !errors.Is(err, tc.want) || (tc.want == nil && got != h) {
				t.Fatalf("Read = %+v, %v; want %+v, %v", got, err, h, tc.want)
			}
		})
	}
	// A flag set by a writer that computed the CRC over it is a layout
	// this build cannot read.
	flagged := bytes.Clone(good)
	flagged[10] = 1
	binary.LittleEndian.PutUint32(flagged[60:], crc32.Checksum(flagged[:60], castagnoli))
	if _, err := Read(bytes.NewReader(flagged), Size, "TESTHDR\x00", 2, testErrors); !errors.Is(err, errVersion) {
		t.Fatalf("a flag set: %v, want %v", err, errVersion)
	}
}
