package daemon

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// warmSavingEngine is a testEngine that keeps a warm file
// (backends.WarmSaver): it counts the saver's calls.
type warmSavingEngine struct {
	*testEngine
	saves atomic.Int64
}

func (e *warmSavingEngine) SaveWarm(context.Context) error {
	e.saves.Add(1)
	return nil
}

// TestWarmSaveInterval: the conversations are saved every SaveInterval
// and the engine's warm cache only every WarmSaveInterval (on the
// daemon's clock); a reload that turns the warm saves off stops them, and
// one that shortens the interval while the saver waits out a longer one
// saves at once when the new interval has passed since the last save, then
// counts from there.
func TestWarmSaveInterval(t *testing.T) {
	key := testKey(t, 5)
	cfg := chatConfig(t)
	cfg.Keys = map[string]serialproto.Key{"dev": key}
	cfg.SaveInterval, cfg.WarmSaveInterval = time.Minute, 5*time.Minute
	cfg.Heartbeat = 65 * time.Second // the session outlives the minutes of the turns below
	logs := &logBuffer{}
	clk := newFakeClock()
	t0 := clk.Now() // the saver counts from here: the clock moves only below
	e := &warmSavingEngine{testEngine: &testEngine{}}
	d, err := newDaemon(cfg, e, slog.New(slog.NewTextHandler(logs, nil)), clk)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := runDaemon(t, d)
	c := dial(t, addr, device.Config{DeviceID: "dev", Key: key, Resume: true})

	// waitFor polls cond for up to 5 s of real time.
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for range 500 {
			if cond() {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("%s: not within 5 s (warm saves %d)\n%s", what, e.saves.Load(), logs)
	}
	// minute moves the clock to minute m once the saver waits for it (its
	// timer set for m: every step has a chat save due), and waits for the
	// saver to be done with it (its timer set for the next minute).
	minute := func(m int) {
		t.Helper()
		at := t0.Add(time.Duration(m) * time.Minute)
		waitFor("the saver's timer for minute "+time.Duration(m).String(), func() bool { return clk.timerAt(at) })
		clk.Advance(at.Sub(clk.Now()))
		waitFor("the saver done with the minute", func() bool { return clk.timerAt(at.Add(time.Minute)) })
	}
	chatSaves := func() int { return strings.Count(logs.String(), "conversations saved") }
	check := func(m, chats int, warm int64) { // chats < 0: not counted
		t.Helper()
		if got := chatSaves(); chats >= 0 && got != chats {
			t.Fatalf("minute %d: %d chat saves, want %d\n%s", m, got, chats, logs)
		}
		if got := e.saves.Load(); got != warm {
			t.Fatalf("minute %d: %d warm saves, want %d", m, got, warm)
		}
	}

	for m := 1; m <= 5; m++ { // a turn a minute: the chat file each minute, the warm file at 5
		if _, _, err := ask(t, c, "turn "+string(rune('0'+m))); err != nil {
			t.Fatal(err)
		}
		minute(m)
		check(m, m, map[bool]int64{false: 0, true: 1}[m == 5])
	}

	off := cfg
	off.WarmSaveInterval = 0 // a reload: the warm file only at stop and reload
	if err := d.Reconfigure(off); err != nil {
		t.Fatal(err)
	}
	// From here the device is idle: its session expires in a minute the
	// janitor and the saver share, and the conversation it parks is saved
	// in that minute or the next; the chat file is not counted.
	for m := 6; m <= 11; m++ { // 5 and 10 minutes after the last warm save: none
		minute(m)
		check(m, -1, 1)
	}

	hour := cfg
	hour.WarmSaveInterval = time.Hour
	if err := d.Reconfigure(hour); err != nil {
		t.Fatal(err)
	}
	minute(12)
	check(12, -1, 1)
	short := cfg
	short.WarmSaveInterval = 2 * time.Minute // 7 minutes since the last save: due now
	if err := d.Reconfigure(short); err != nil {
		t.Fatal(err)
	}
	waitFor("the warm save at the reload that shortened the interval", func() bool { return e.saves.Load() == 2 })
	minute(13)
	check(13, -1, 2)
	minute(14) // 2 minutes after the save at minute 12
	check(14, -1, 3)
}
