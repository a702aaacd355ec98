package kvstate

import (
	"bytes"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

var testHeader = Header{Identity: [32]byte{1, 2, 3}, Sequences: 4, SequenceContext: 64}

func testRecords() []Record {
	return []Record{
		{Tokens: []int32{1, 15, 300, 7}, State: bytes.Repeat([]byte{0xab}, 40)},
		{Tokens: []int32{1}, State: []byte{9}},
	}
}

func encode(t testing.TB, h Header, recs []Record) []byte {
	t.Helper()
	var buf bytes.Buffer
	h.Records = uint32(len(recs))
	w, err := NewWriter(&buf, h)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if err := w.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// decode reads every record of b as the engine does.
func decode(b []byte, want Header) ([]Record, error) {
	rd, err := NewReader(bytes.NewReader(b), int64(len(b)), want)
	if err != nil {
		return nil, err
	}
	var recs []Record
	for {
		rec, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return recs, nil
		}
		if err != nil {
			return recs, err
		}
		recs = append(recs, rec)
	}
}

func TestRoundTrip(t *testing.T) {
	recs := testRecords()
	b := encode(t, testHeader, recs)
	var size int64 = headerSize
	for _, r := range recs {
		size += r.Size()
	}
	if int64(len(b)) != size {
		t.Fatalf("file of %d bytes, Size says %d", len(b), size)
	}
	got, err := decode(b, testHeader)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(got, recs, func(a, b Record) bool {
		return slices.Equal(a.Tokens, b.Tokens) && bytes.Equal(a.State, b.State)
	}) {
		t.Fatalf("got %+v, want %+v", got, recs)
	}
	if empty, err := decode(encode(t, testHeader, nil), testHeader); err != nil || len(empty) != 0 {
		t.Fatalf("empty file: %v, %v", empty, err)
	}
}

// TestRefused: every way a file can be wrong is refused with its error,
// before any record reaches the engine or after the records before it.
func TestRefused(t *testing.T) {
	good := encode(t, testHeader, testRecords())
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	// headerCRC makes a header changed on purpose pass its CRC.
	headerCRC := func(b []byte) []byte {
		c := crc32.Checksum(b[:60], castagnoli)
		b[60], b[61], b[62], b[63] = byte(c), byte(c>>8), byte(c>>16), byte(c>>24)
		return b
	}
	other := testHeader
	other.Identity[0] = 99
	layout := testHeader
	layout.Sequences = 8
	cases := []struct {
		name  string
		file  []byte
		want  Header
		err   error
		nrecs int // records returned before the error
	}{
		{"empty", nil, testHeader, ErrTruncated, 0},
		{"short header", good[:40], testHeader, ErrTruncated, 0},
		{"magic", mutate(func(b []byte) []byte { b[0] = 'X'; return b }), testHeader, ErrMagic, 0},
		{"version", mutate(func(b []byte) []byte { b[8] = 2; return headerCRC(b) }), testHeader, ErrVersion, 0},
		{"flags", mutate(func(b []byte) []byte { b[10] = 1; return headerCRC(b) }), testHeader, ErrVersion, 0},
		{"header crc", mutate(func(b []byte) []byte { b[20] ^= 1; return b }), testHeader, ErrCorrupt, 0},
		{"other model", good, other, ErrIdentity, 0},
		{"other layout", good, layout, ErrLayout, 0},
		{"too many records", mutate(func(b []byte) []byte { b[12] = 5; return headerCRC(b) }), testHeader, ErrCorrupt, 0},
		{"one record more than written", mutate(func(b []byte) []byte { b[12] = 3; return headerCRC(b) }), testHeader, ErrTruncated, 2},
		{"state byte flipped", mutate(func(b []byte) []byte { b[headerSize+12+16+5] ^= 0x40; return b }), testHeader, ErrCorrupt, 0},
		{"token flipped", mutate(func(b []byte) []byte { b[headerSize+12+4] ^= 1; return b }), testHeader, ErrCorrupt, 0},
		{"second record crc", mutate(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), testHeader, ErrCorrupt, 1},
		{"state longer than the file", mutate(func(b []byte) []byte { b[headerSize+4+5] = 0x10; return b }), testHeader, ErrTruncated, 0},
		{"no tokens", mutate(func(b []byte) []byte { copy(b[headerSize:], []byte{0, 0, 0, 0}); return b }), testHeader, ErrCorrupt, 0},
		{"more tokens than the context", mutate(func(b []byte) []byte { b[headerSize] = 65; return b }), testHeader, ErrCorrupt, 0},
		{"truncated in a record", good[:len(good)-3], testHeader, ErrTruncated, 1},
		{"trailing bytes", append(bytes.Clone(good), 0), testHeader, ErrCorrupt, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			recs, err := decode(c.file, c.want)
			if !errors.Is(err, c.err) {
				t.Fatalf("err = %v, want %v", err, c.err)
			}
			if len(recs) != c.nrecs {
				t.Fatalf("%d records before the error, want %d", len(recs), c.nrecs)
			}
		})
	}
}

func TestWriterChecks(t *testing.T) {
	var buf bytes.Buffer
	if _, err := NewWriter(&buf, Header{Sequences: 0, SequenceContext: 8}); err == nil {
		t.Fatal("a header of no sequences was written")
	}
	h := testHeader
	h.Records = 1
	w, err := NewWriter(&buf, h)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Record{{State: []byte{1}}, {Tokens: []int32{1}}, {Tokens: make([]int32, 65), State: []byte{1}}} {
		if err := w.Add(bad); err == nil {
			t.Fatalf("record %d tokens, %d bytes written", len(bad.Tokens), len(bad.State))
		}
	}
	if err := w.Close(); err == nil {
		t.Fatal("Close with a record missing succeeded")
	}
	if err := w.Add(testRecords()[0]); err != nil {
		t.Fatal(err)
	}
	if err := w.Add(testRecords()[1]); err == nil {
		t.Fatal("a record more than announced was written")
	}
}

// TestIdentity: the same file gives the same identity; a byte changed in
// its header or deep in its weights, its size, or the build change it.
func TestIdentity(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	id := func(path, build string) [32]byte {
		t.Helper()
		v, err := Identity(path, build)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	base := id(write("a", data), "b1")
	if again := id(write("a2", bytes.Clone(data)), "b1"); again != base {
		t.Fatal("same bytes, different identity")
	}
	// The first sampled block after the head starts at identityHead.
	for name, off := range map[string]int{"header": 100, "weights": identityHead + 10, "last": len(data) - 1} {
		b := bytes.Clone(data)
		b[off] ^= 1
		if id(write(name, b), "b1") == base {
			t.Errorf("a byte changed in the %s: same identity", name)
		}
	}
	if id(write("short", data[:len(data)-1]), "b1") == base {
		t.Error("a shorter file: same identity")
	}
	if id(write("a3", data), "b2") == base {
		t.Error("another build: same identity")
	}
	if small := id(write("small", data[:100]), "b1"); small == base {
		t.Error("a small file: same identity")
	}
	if _, err := Identity(filepath.Join(dir, "missing"), "b1"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// FuzzReader: no input makes the reader panic, return a record that breaks
// the header's bounds, or allocate beyond the input's size.
func FuzzReader(f *testing.F) {
	good := encode(f, testHeader, testRecords())
	f.Add(good)
	f.Add(encode(f, testHeader, nil))
	f.Add(good[:len(good)-3])
	f.Add(good[:headerSize])
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, err := decode(b, testHeader)
		var total int64
		for _, r := range recs {
			if len(r.Tokens) == 0 || len(r.Tokens) > int(testHeader.SequenceContext) || len(r.State) == 0 {
				t.Fatalf("record of %d tokens, %d bytes returned", len(r.Tokens), len(r.State))
			}
			total += r.Size()
		}
		if total > int64(len(b)) {
			t.Fatalf("records of %d bytes from %d bytes", total, len(b))
		}
		if err == nil && !bytes.Equal(b, encode(t, testHeader, recs)) {
			t.Fatal("accepted input that does not re-encode to itself")
		}
	})
}
