package serialproto

import (
	"slices"
	"testing"
)

func TestTextBuffer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []string
		max    int
		final  bool
		want   []string // chunks, in order, until Next returns nothing
	}{
		{"ascii fits", []string{"Hello"}, 10, false, []string{"Hello"}},
		{"split at limit", []string{"Hello world"}, 4, false, []string{"Hell", "o wo", "rld"}},
		{"euro sign never split", []string{"ab€"}, 4, false, []string{"ab", "€"}},
		// A token ending inside a character: its first bytes wait.
		{"partial character waits", []string{"a\xe2\x82"}, 10, false, []string{"a"}},
		{"partial character completes", []string{"a\xe2\x82", "\xac!"}, 10, false, []string{"a", "€!"}},
		{"invalid byte replaced", []string{"a\xffb"}, 10, false, []string{"a\uFFFDb"}},
		{"truncated at the end is replaced when final", []string{"a\xf0\x9f"}, 10, true, []string{"a", "\uFFFD\uFFFD"}},
		{"emoji", []string{"🌍🌍"}, 5, false, []string{"🌍", "🌍"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tb TextBuffer
			var got []string
			for _, w := range tc.writes {
				_, _ = tb.WriteString(w)
				for {
					c := tb.Next(nil, tc.max, false)
					if len(c) == 0 {
						break
					}
					got = append(got, string(c))
				}
			}
			if tc.final {
				for tb.Len() > 0 {
					got = append(got, string(tb.Next(nil, tc.max, true)))
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("chunks %q, want %q", got, tc.want)
			}
		})
	}
}
