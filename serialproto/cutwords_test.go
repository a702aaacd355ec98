package serialproto

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestErrorFitCutsAtWords(t *testing.T) {
	for _, tc := range []struct {
		text  string
		limit int
		want  string
	}{
		{"prompt exceeds the context: 5033 prompt tokens, context 2048", 68, "prompt exceeds the context: 5033 prompt tokens, context 2048"},
		{"prompt exceeds the context: 5033 prompt tokens, context 2048", 60, "prompt exceeds the context: 5033 prompt tokens…"},
		{"prompt exceeds the context: 5033 prompt tokens, context 2048", 36, "prompt exceeds the context…"},
		{"no endpoint reachable within 2s: http://127.0.0.1:11434", 32, "no endpoint reachable…"},
		{"Grüße 🌱 sind zu lang für diesen Rahmen", 20, "Grüße 🌱…"},
		{"abcdefghijklmnopqrstuvwxyz", 14, "abcdefg…"},
		{"no model yet: install /var/lib/mcpd/models/model.gguf (no such file)", 50, "no model yet: install /var/lib/mcpd/models/…"},
	} {
		e := NewError(CodeTooLarge, tc.text)
		e.Fit(tc.limit)
		if e.Text != tc.want {
			t.Errorf("Fit(%d) of %q = %q, want %q", tc.limit, tc.text, e.Text, tc.want)
		}
		if len(e.Text) > tc.limit-4 || !utf8.ValidString(e.Text) {
			t.Errorf("%q: %d bytes for limit %d", e.Text, len(e.Text), tc.limit)
		}
		if _, err := e.AppendBody(nil); err != nil {
			t.Errorf("%q does not encode: %v", e.Text, err)
		}
	}
	long := NewError(CodeBusy, strings.Repeat("word ", 40))
	long.Fit(256)
	if len(long.Text) > MaxErrorText || !strings.HasSuffix(long.Text, "word…") {
		t.Errorf("long text cut to %q", long.Text)
	}
}
