package serialproto

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// basicStatusReply is the STATUS_REPLY decoder as it was before the
// extended layout (§11.11's basic layout only), kept to check that old
// devices and new ones never disagree on a body both accept.
func basicStatusReply(b []byte) (StatusReply, bool) {
	if len(b) < 4 || len(b) < 4+int(b[3]) || len(b) > MaxData {
		return StatusReply{}, false
	}
	n := 4 + int(b[3])
	m := StatusReply{State: b[0], LoadPct: b[1], Queue: b[2], Backend: string(b[4:n]), Model: string(b[n:])}
	return m, m.LoadPct <= 100 && utf8.ValidString(m.Backend) && utf8.ValidString(m.Model)
}

func TestStatusReplyExtended(t *testing.T) {
	kv := &CacheFigures{Hits: 1, Misses: 2, Evictions: 3, Bytes: 4}
	field := func(typ byte, v ...byte) []byte { return append([]byte{typ, byte(len(v))}, v...) }
	figures := func(h byte) []byte { return append([]byte{0, 0, 0, h}, make([]byte, 16)...) }
	head := []byte{0, 10, 1, 0xFF, 2, 'l', 'c', 1, 'm'}
	tests := []struct {
		name string
		body []byte
		want StatusReply // compared without the pointers' identity
	}{
		{"unknown field skipped", bytes.Join([][]byte{head, field(0x7E, 1, 2, 3), field(StatusFieldKVCache, figures(9)...)}, nil),
			StatusReply{LoadPct: 10, Queue: 1, Backend: "lc", Model: "m", Extended: true, KV: &CacheFigures{Hits: 9}}},
		{"unknown field of any length, twice", bytes.Join([][]byte{head, field(0x03), field(0x03, make([]byte, 200)...)}, nil),
			StatusReply{LoadPct: 10, Queue: 1, Backend: "lc", Model: "m", Extended: true}},
		{"fields in any order", bytes.Join([][]byte{head, field(StatusFieldResponseCache, figures(5)...), field(StatusFieldKVCache, figures(6)...)}, nil),
			StatusReply{LoadPct: 10, Queue: 1, Backend: "lc", Model: "m", Extended: true, KV: &CacheFigures{Hits: 6}, Responses: &CacheFigures{Hits: 5}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got StatusReply
			if err := got.UnmarshalBody(tc.body); err != nil {
				t.Fatal(err)
			}
			if messageString(&got) != messageString(&tc.want) {
				t.Fatalf("got %s, want %s", messageString(&got), messageString(&tc.want))
			}
			if _, ok := basicStatusReply(tc.body); ok {
				t.Fatal("a basic decoder accepts the extended layout")
			}
		})
	}
	// Cache figures are refused in the basic layout: a daemon that would
	// send them to a device that did not ask is a bug, not a silent drop.
	if _, err := (&StatusReply{KV: kv}).AppendBody(nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("basic layout with figures: %v", err)
	}
}

func messageString(m *StatusReply) string {
	return strings.Join(messageFields(m), " ")
}

// TestStatusReplyFit: the body fits every receiver limit; the fields go in
// whole before the names, and are dropped when even empty names leave no
// room for them.
func TestStatusReplyFit(t *testing.T) {
	full := StatusReply{Backend: "llama.cpp", Model: "bench-135m-q8_0.gguf", Extended: true,
		KV: &CacheFigures{Hits: 1}, Responses: &CacheFigures{Hits: 2}}
	tests := []struct {
		limit         int
		kv, responses bool
		backend       string
		model         string
	}{
		{256, true, true, "llama.cpp", "bench-135m-q8_0.gguf"},
		{60, true, true, "llama.cpp", "b"},
		{50, true, true, "", ""},
		{49, true, false, "llama.cpp", "bench-135m-q"},
		{32, true, false, "llam", ""},
	}
	for _, tc := range tests {
		m := full
		m.Fit(tc.limit)
		body, err := m.AppendBody(nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(body) > tc.limit || (m.KV != nil) != tc.kv || (m.Responses != nil) != tc.responses || m.Backend != tc.backend || m.Model != tc.model {
			t.Errorf("Fit(%d): %d bytes, kv %v, responses %v, %q, %q", tc.limit, len(body), m.KV != nil, m.Responses != nil, m.Backend, m.Model)
		}
	}
}

// FuzzStatusReply: the extended layout never passes for a basic one — a
// body the basic decoder (an old device) accepts decodes to the same
// fields with the new one, and every extended body is one it refuses.
func FuzzStatusReply(f *testing.F) {
	for _, v := range parseVectorsTB(f, mustReadVectors(f)) {
		if v.kind == "msg" && v.fields["cmd"] == "STATUS_REPLY" {
			f.Add(v.hexTB(f, "body"))
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var m StatusReply
		err := m.UnmarshalBody(body)
		old, oldOK := basicStatusReply(body)
		switch {
		case err != nil && !errors.Is(err, ErrMalformed):
			t.Fatalf("unexpected error class: %v", err)
		case oldOK && (err != nil || m.Extended || messageString(&m) != messageString(&old)):
			t.Fatalf("the basic decoder reads %s, the new one %s (%v)", messageString(&old), messageString(&m), err)
		case err == nil && m.Extended && oldOK:
			t.Fatal("an extended body passes the basic decoder")
		case err != nil:
			return
		}
		out, err := m.AppendBody(nil)
		if err != nil {
			t.Fatalf("parsed but does not encode: %v", err)
		}
		var again StatusReply
		if err := again.UnmarshalBody(out); err != nil || messageString(&again) != messageString(&m) {
			t.Fatalf("re-encoded %x reads %s (%v), was %s", out, messageString(&again), err, messageString(&m))
		}
		if len(out) > len(body) {
			t.Fatalf("re-encoded body grew: %d > %d bytes", len(out), len(body))
		}
	})
}
