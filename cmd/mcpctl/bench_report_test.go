package main

import (
	"strings"
	"testing"
	"time"
)

// TestMarkdownManyOverSingle: a many-device scenario is set against the
// one-device scenario of the same link from the same report (aggregate
// tokens/s, its TTFT p99 over the single device's p50), and only then.
func TestMarkdownManyOverSingle(t *testing.T) {
	single := scenarioReport{Name: "single", Transport: "udp", Devices: 1, TokensPerSec: 100, TTFTp50: 40, TTFTp99: 60}
	udp := scenarioReport{Name: "udp", Transport: "udp", Devices: 8, TokensPerSec: 250, TTFTp50: 90, TTFTp99: 120}
	mqtt := scenarioReport{Name: "mqtt", Transport: "mqtt", Devices: 8, TokensPerSec: 200, TTFTp99: 200}
	line := "udp (8 devices) ÷ single, same run: aggregate tokens/s **2.50×**, TTFT p99 ÷ single p50 **3.00×**."
	for _, tc := range []struct {
		name      string
		scenarios []scenarioReport
		want      bool
	}{
		{"both", []scenarioReport{single, udp}, true},
		{"many first", []scenarioReport{udp, single}, true},
		{"no single", []scenarioReport{udp}, false},
		{"other link's single", []scenarioReport{single, mqtt}, false},
		{"single has no figures", []scenarioReport{{Name: "single", Devices: 1}, udp}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			if err := writeMarkdown(&b, benchReport{Started: time.Unix(0, 0), Scenarios: tc.scenarios}, ""); err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(b.String(), line); got != tc.want {
				t.Errorf("ratio line present %v, want %v:\n%s", got, tc.want, b.String())
			}
			if !tc.want && strings.Contains(b.String(), "÷") {
				t.Errorf("a ratio without its baseline:\n%s", b.String())
			}
		})
	}
}
