package device

import (
	"strings"
	"testing"
)

func TestDownInstance(t *testing.T) {
	for _, tc := range []struct {
		topic, inst string
		ok          bool
	}{
		{"mcpd/v1/kitchen/down", "", true},
		{"mcpd/v1/kitchen/down/mcpd-a", "mcpd-a", true},
		{"mcpd/v1/kitchen/down/", "", false},
		{"mcpd/v1/kitchen/down/a/b", "", false},
		{"mcpd/v1/kitchen/downstairs", "", false},
		{"mcpd/v1/kitchen2/down", "", false},
		{"mcpd/v1/garage/down/mcpd-a", "", false},
		{"mcpd/v1/kitchen/up", "", false},
	} {
		inst, ok := downInstance("kitchen", tc.topic)
		if inst != tc.inst || ok != tc.ok {
			t.Errorf("%q: %q %v, want %q %v", tc.topic, inst, ok, tc.inst, tc.ok)
		}
	}
}

// FuzzDownInstance: a topic is accepted only as the device's own down
// topic, or one level below it, and the instance is that level.
func FuzzDownInstance(f *testing.F) {
	for _, s := range []string{"mcpd/v1/kitchen/down", "mcpd/v1/kitchen/down/mcpd-a", "mcpd/v1/kitchen/down/", "mcpd/v1/kitchen/down//", "mcpd/v1/kitchen/downx/y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		inst, ok := downInstance("kitchen", topic)
		if !ok {
			return
		}
		want := "mcpd/v1/kitchen/down"
		if inst != "" {
			want += "/" + inst
		}
		if topic != want || strings.Contains(inst, "/") {
			t.Fatalf("%q → %q", topic, inst)
		}
	})
}
