package chatstate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/internal/stateheader"
)

var testID = Identity("llama.cpp|/models/tiny.gguf")

func testConvs() []Conversation {
	return []Conversation{
		{Owner: "key:greenhouse-1", DeviceID: "greenhouse-1", KeyCheck: [16]byte{7, 7}, LastUsed: time.Unix(1764950000, 12345),
			Messages: []backends.Message{
				{Role: backends.RoleUser, Content: "Which bed needs water?"},
				{Role: backends.RoleAssistant, Content: "", ToolCall: &backends.ToolCall{Tool: 0, Name: "soil", Args: []byte(`{"bed":"east"}`)}},
				{Role: backends.RoleTool, Content: "12 %"},
				{Role: backends.RoleAssistant, Content: "The east bed: \xff\xfe its soil is at 12 %.", Tokens: []int32{791, 11226, 0, 1 << 30}},
			}},
		{Owner: "port:/dev/ttyUSB0/pump", DeviceID: "pump", LastUsed: time.Unix(1764940000, 0),
			Messages: []backends.Message{{Role: backends.RoleUser, Content: "On?"}, {Role: backends.RoleAssistant, Content: "Yes."}}},
	}
}

func encodeFile(t testing.TB, id [32]byte, convs []Conversation) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, id, convs); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name  string
		convs []Conversation
	}{
		{"two", testConvs()},
		{"none", nil},
		{"tool call without args", []Conversation{{Owner: "id:a", DeviceID: "a", LastUsed: time.Unix(0, 1),
			Messages: []backends.Message{{Role: backends.RoleAssistant, ToolCall: &backends.ToolCall{Tool: -1, Name: "x"}}}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := encodeFile(t, testID, tc.convs)
			want := int64(headerSize)
			for _, c := range tc.convs {
				want += c.Size()
			}
			if int64(len(b)) != want {
				t.Fatalf("%d bytes, Size says %d", len(b), want)
			}
			got, err := Read(bytes.NewReader(b), int64(len(b)), testID)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.convs) {
				t.Fatalf("%d conversations back, wrote %d", len(got), len(tc.convs))
			}
			for i := range got {
				w := tc.convs[i]
				if !w.LastUsed.Equal(got[i].LastUsed) {
					t.Fatalf("conversation %d last used %v, wrote %v", i, got[i].LastUsed, w.LastUsed)
				}
				got[i].LastUsed = w.LastUsed
				if !reflect.DeepEqual(got[i], w) {
					t.Fatalf("conversation %d:\n got %+v\nwant %+v", i, got[i], w)
				}
			}
		})
	}
}

// TestRefused: every damaged or foreign file is an error of its kind,
// never a panic nor a partial result.
func TestRefused(t *testing.T) {
	good := encodeFile(t, testID, testConvs())
	patch := func(off int, v ...byte) []byte {
		b := bytes.Clone(good)
		copy(b[off:], v)
		return b
	}
	resum := func(b []byte) []byte { // a header CRC that matches again
		binary.LittleEndian.PutUint32(b[60:], crc32.Checksum(b[:60], castagnoli))
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"header cut", good[:40], ErrTruncated},
		{"record cut", good[:len(good)-3], ErrTruncated},
		{"magic", patch(0, 'X'), ErrMagic},
		{"kv file", append([]byte("MCPDKVC\x00"), good[8:]...), ErrMagic},
		{"version 0", resum(patch(8, 0)), ErrVersion},
		{"version 3", resum(patch(8, 3)), ErrVersion},
		{"token count huge", badTokens(t, 0x40000001), ErrCorrupt},
		{"token count past the record", badTokens(t, 3), ErrCorrupt},
		{"negative token id", encodeRaw(t, testID, []Conversation{negativeToken()}), ErrCorrupt},
		{"flags", resum(patch(10, 1)), ErrVersion},
		{"reserved", resum(patch(50, 1)), ErrVersion},
		{"header bit flip", patch(20, good[20]^1), ErrCorrupt},
		{"record bit flip", patch(headerSize+10, good[headerSize+10]^0x40), ErrCorrupt},
		{"last byte", patch(len(good)-1, good[len(good)-1]^1), ErrCorrupt},
		{"trailing bytes", append(bytes.Clone(good), 0), ErrCorrupt},
		{"record count high", resum(patch(12, 3)), ErrTruncated},
		{"record count huge", resum(patch(12, 0xff, 0xff, 0xff, 0x7f)), ErrCorrupt},
		{"other model", encodeFile(t, Identity("llama.cpp|/models/other.gguf"), testConvs()), ErrIdentity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Read(bytes.NewReader(tc.b), int64(len(tc.b)), testID)
			if !errors.Is(err, tc.want) || got != nil {
				t.Fatalf("%d conversations, err %v; want %v", len(got), err, tc.want)
			}
		})
	}
}

// TestWriteRefusesUnsound: what the reader would refuse is not written.
func TestWriteRefusesUnsound(t *testing.T) {
	for _, c := range []Conversation{
		{Owner: "", DeviceID: "a", Messages: []backends.Message{{Role: backends.RoleUser}}},
		{Owner: "id:a", DeviceID: "a"},
		{Owner: "id:a", DeviceID: "a", Messages: []backends.Message{{Role: "narrator"}}},
	} {
		if err := Write(new(bytes.Buffer), testID, []Conversation{c}); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%+v written: %v", c, err)
		}
	}
}

func TestSaveLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "chats.mcpdch")
	if _, err := Load(path, testID); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("no file: %v", err)
	}
	n, err := Save(path, testID, testConvs())
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Size() != n || fi.Mode().Perm() != 0o600 {
		t.Fatalf("saved %d bytes: %v %v", n, fi, err)
	}
	got, err := Load(path, testID)
	if err != nil || len(got) != 2 || got[0].Messages[3].Content != testConvs()[0].Messages[3].Content {
		t.Fatalf("loaded %+v, %v", got, err)
	}
	if tmp, _ := filepath.Glob(path + ".*.tmp"); len(tmp) != 0 {
		t.Fatalf("temporary files left: %v", tmp)
	}
	if _, err := Save(path, testID, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("nothing to keep, file still there: %v", err)
	}
}

// FuzzReader: no input makes Read panic or allocate beyond the input's
// size, and whatever it accepts re-encodes to the same bytes.
func FuzzReader(f *testing.F) {
	good := encodeFile(f, testID, testConvs())
	f.Add(good)
	f.Add(encodeFile(f, testID, nil))
	f.Add(good[:len(good)-3])
	f.Add(good[:headerSize])
	f.Add([]byte(Magic))
	f.Add(encodeVersion(f, 1, testConvs()))
	f.Fuzz(func(t *testing.T, b []byte) {
		convs, err := Read(bytes.NewReader(b), int64(len(b)), testID)
		if err != nil {
			if convs != nil {
				t.Fatalf("%d conversations with error %v", len(convs), err)
			}
			return
		}
		version := binary.LittleEndian.Uint16(b[8:])
		var total int64 = headerSize
		for _, c := range convs {
			total += c.size(version)
		}
		if total != int64(len(b)) {
			t.Fatalf("conversations of %d bytes from %d bytes", total, len(b))
		}
		var buf bytes.Buffer
		if err := write(&buf, testID, convs, version); err != nil || !bytes.Equal(b, buf.Bytes()) {
			t.Fatal("accepted input that does not re-encode to itself")
		}
	})
}

func encodeVersion(t testing.TB, version uint16, convs []Conversation) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := write(&buf, testID, convs, version); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// encodeRaw encodes convs without Write's checks, as a damaged or hostile
// writer could have.
func encodeRaw(t testing.TB, id [32]byte, convs []Conversation) []byte {
	t.Helper()
	b := stateheader.Encode(Magic, Version, stateheader.Header{Records: uint32(len(convs)), Identity: id})
	for _, c := range convs {
		b = append(b, encode(c, Version)...)
	}
	return b
}

func negativeToken() Conversation {
	return Conversation{Owner: "id:a", DeviceID: "a", LastUsed: time.Unix(0, 1),
		Messages: []backends.Message{{Role: backends.RoleAssistant, Content: "hi", Tokens: []int32{5, -1}}}}
}

// badTokens is a file whose one answer claims count tokens and holds one,
// its record's length and CRC correct.
func badTokens(t testing.TB, count uint32) []byte {
	t.Helper()
	c := Conversation{Owner: "id:a", DeviceID: "a", LastUsed: time.Unix(0, 1),
		Messages: []backends.Message{{Role: backends.RoleAssistant, Content: "hi", Tokens: []int32{5}}}}
	rec := encode(c, Version)
	body := rec[:len(rec)-4]
	binary.LittleEndian.PutUint32(body[len(body)-8:], count)
	rec = binary.LittleEndian.AppendUint32(body, crc32.Checksum(body, castagnoli))
	return append(stateheader.Encode(Magic, Version, stateheader.Header{Records: 1, Identity: testID}), rec...)
}

// TestReadVersion1: a file of version 1 (before answers kept their tokens)
// is read whole, its answers without tokens: a daemon upgraded from it
// keeps its conversations.
func TestReadVersion1(t *testing.T) {
	b := encodeVersion(t, 1, testConvs())
	if v := binary.LittleEndian.Uint16(b[8:]); v != 1 {
		t.Fatalf("version %d written", v)
	}
	got, err := Read(bytes.NewReader(b), int64(len(b)), testID)
	if err != nil {
		t.Fatal(err)
	}
	want := testConvs()
	for i := range want {
		for j := range want[i].Messages {
			want[i].Messages[j].Tokens = nil
		}
		got[i].LastUsed = want[i].LastUsed
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if v2 := encodeFile(t, testID, testConvs()); bytes.Equal(v2, b) || len(v2) <= len(b) {
		t.Fatal("version 2 wrote no tokens")
	}
}
