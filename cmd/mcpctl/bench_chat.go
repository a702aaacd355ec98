package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	sp "github.com/mcpd-project/mcpd/serialproto"
)

// chatQuestions are a conversation's follow-up turns, in order.
var chatQuestions = []string{
	"And the humidity in the east bed?", "Is that too dry for tomatoes?", "What about the west bed?",
	"Should I open the vents?", "How warm is the air now?", "And at night?", "Is the soil moisture trending down?",
	"When did we last water?", "Which bed needs water first?", "Summarise what we discussed.",
}

// runChat is the chat scenario: one device over UDP holds conversations of
// o.turns turns (the first with NEW_CHAT, then follow-ups the daemon adds
// to the session's history), one after another until the duration or the
// request budget ends, and reports time to first token by turn. Each
// conversation opens with a question of its own, so its first turn is
// cold, as a new device's would be; later turns resend the history, which
// an engine that keeps its KV cache need not evaluate again.
func runChat(ctx context.Context, sc scenario, o benchOptions, turns int) scenarioReport {
	rep := scenarioReport{Name: sc.name, Transport: sc.transport, Devices: 1, Errors: map[string]int{}}
	t, err := sc.dial(0)
	if err != nil {
		rep.Errors["dial"]++
		return rep
	}
	defer t.Close()
	c := device.New(t, sc.config(0))
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.Hello(hctx); err != nil {
		rep.Errors["hello"]++
		return rep
	}
	byTurn := make([][]time.Duration, turns)
	var ttfts, latencies []time.Duration
	runCtx, stop := context.WithTimeout(ctx, o.duration)
	defer stop()
	start := time.Now()
	issued := 0
	// conversation runs one; measured false for the warm-up ones. It
	// reports whether the run may go on.
	conversation := func(n int, measured bool) bool {
		for turn := range turns {
			if runCtx.Err() != nil || (measured && o.maxRequests > 0 && issued >= o.maxRequests) {
				return false
			}
			m := &sp.Infer{Set: sp.OptionSet(0).With(sp.OptMaxTokens), MaxTokens: uint16(o.maxTokens)}
			if turn == 0 {
				m.Set = m.Set.With(sp.OptNewChat)
				m.Prompt = fmt.Sprintf("Conversation %d. %s", n, o.prompt)
			} else {
				m.Prompt = chatQuestions[(turn-1)%len(chatQuestions)]
			}
			t0 := time.Now()
			var first time.Duration
			done, err := c.Ask(runCtx, m, func([]byte) error {
				if first == 0 {
					first = time.Since(t0)
				}
				return nil
			})
			lat := time.Since(t0)
			if !measured {
				if err != nil {
					return runCtx.Err() == nil
				}
				continue
			}
			issued++
			var perr *sp.Error
			switch {
			case err == nil:
				rep.Requests++
				rep.Tokens += int64(done.Tokens)
				byTurn[turn] = append(byTurn[turn], first)
				ttfts = append(ttfts, first)
				latencies = append(latencies, lat)
			case runEnded(runCtx, err):
				return false
			case errors.As(err, &perr):
				rep.Errors[perr.Code.String()]++
				return true // the conversation is broken: start another
			default:
				kind := transportError(err)
				if rep.Errors[kind] == 0 {
					fmt.Fprintf(o.log, "bench: %s: %s: %v\n", sc.name, kind, err)
				}
				rep.Errors[kind]++
				return true
			}
		}
		return true
	}
	n := 0
	for range o.warmup {
		n++
		if !conversation(n, false) {
			break
		}
	}
	for {
		n++
		if !conversation(n, true) {
			break
		}
	}
	el := time.Since(start)
	rep.Duration = el.Seconds()
	rep.TokensPerSec = float64(rep.Tokens) / el.Seconds()
	rep.TTFTp50, rep.TTFTp95, rep.TTFTp99 = pct(ttfts, 50), pct(ttfts, 95), pct(ttfts, 99)
	rep.Latencyp50, rep.Latencyp95, rep.Latencyp99 = pct(latencies, 50), pct(latencies, 95), pct(latencies, 99)
	rep.Latencies, rep.TTFTs = millis(latencies), millis(ttfts)
	for _, d := range byTurn {
		rep.TurnTTFTp50 = append(rep.TurnTTFTp50, pct(d, 50))
	}
	if len(byTurn[0]) > 0 && len(byTurn[turns-1]) > 0 {
		rep.LastOverFirst = pct(byTurn[turns-1], 50) / pct(byTurn[0], 50)
	}
	return rep
}

// writeTurns prints the chat scenario's time to first token by turn.
func writeTurns(w io.Writer, s scenarioReport) {
	if len(s.TurnTTFTp50) == 0 {
		return
	}
	parts := make([]string, len(s.TurnTTFTp50))
	for i, v := range s.TurnTTFTp50 {
		parts[i] = fmt.Sprintf("%d: %.1f", i+1, v)
	}
	fmt.Fprintf(w, "  time to first token by turn, p50 ms: %s; turn %d ÷ turn 1: %.2f\n", strings.Join(parts, ", "),
		len(s.TurnTTFTp50), s.LastOverFirst)
}

// stringsFlag is a repeatable string flag.
type stringsFlag []string

func (f *stringsFlag) String() string { return strings.Join(*f, " ") }

func (f *stringsFlag) Set(v string) error {
	*f = append(*f, v)
	return nil
}
