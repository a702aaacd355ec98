package soak

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/internal/impair"
	"github.com/mcpd-project/mcpd/serialproto"
)

// lateReplays is a network that keeps a copy of a quarter of the datagrams,
// each way, and delivers it again 0.1 to 2 s later, on top of a clean link:
// old INFERs, ACKs, PINGs and HELLOs reach the daemon long after their
// requests ended, old TOKENs and DONEs reach the devices.
var lateReplays = impair.Faults{Replay: 0.25, ReplayAfter: 100 * time.Millisecond, ReplayJitter: 1900 * time.Millisecond}

// replayPause is how long a device waits between its requests. It bounds
// how many requests late a replayed copy can be — at most 2 s / 20 ms = 100
// of its device's — inside the 127 that 8-bit seqs can recognise
// (protocol.md §5); a copy later than that is indistinguishable from a new
// request in an unsigned session.
const replayPause = 20 * time.Millisecond

// TestLateReplays: copies of old datagrams arrive late, some while their
// request is still remembered (a duplicate: answered again), most after it
// has left the daemon's 32-seq history (stale: ERROR UNEXPECTED). No
// request runs twice, and every answer is exact. Signed, the replays are
// rejected by their counters before their seq is looked at.
func TestLateReplays(t *testing.T) {
	for _, signed := range []bool{false, true} {
		name := "udp late replays (25 % of datagrams again 0.1–2 s later)"
		if signed {
			name += ", signed"
		}
		t.Run(name, func(t *testing.T) {
			e := &Echo{}
			cfg := daemon.Config{}
			dcfg := device.Config{DeviceID: "replayed", MaxData: 64, Window: 4, RTO: 60 * time.Millisecond, Retries: 20}
			if signed {
				key, _ := serialproto.NewKey(bytes.Repeat([]byte{0x52}, 32))
				cfg.Keys = map[string]serialproto.Key{}
				for i := range 4 {
					cfg.Keys[fmt.Sprintf("replayed-%d", i)] = key
				}
				dcfg.Key = key
			}
			r := startDaemon(t, cfg, e)
			p := startProxy(t, r.addr, lateReplays, 13)
			row := devicesThen(t, p.Addr(), 4, 100000, dcfg, plain, AnswerFor, replayPause, nil)
			settle(t, r.d)
			row.Scenario = name
			row.Duplicated = e.Duplicated()
			row.Retransmits = r.d.Stats().Retransmits.Load()
			st := p.Stats()
			replayed := st.Up.Replayed + st.Down.Replayed
			c := r.d.Stats().Counters()
			row.Note = fmt.Sprintf("proxy replayed %d of %d datagrams (%d to the daemon); daemon: %d stale requests answered UNEXPECTED, %d copies answered again (ACK, WELCOME)",
				replayed, st.Up.In+st.Down.In, st.Up.Replayed, refusedUnexpected(r.d), c.Duplicates)
			if signed {
				row.Note += fmt.Sprintf(", %d replayed and %d stale signed frames dropped", c.AuthReplay, c.AuthStale)
			}
			check(t, row, false)
			if row.Errors != 0 {
				t.Errorf("%d errors on a link that only replays old datagrams: %s", row.Errors, row.CodeSummary())
			}
			if st.Up.Replayed == 0 {
				t.Error("nothing was replayed to the daemon: the scenario proves nothing")
			}
			record(t, row)
		})
	}
}

// refusedUnexpected counts the requests the daemon answered UNEXPECTED —
// in this scenario, the stale copies.
func refusedUnexpected(d *daemon.Daemon) int64 {
	var n int64
	for _, l := range d.Stats().Links() {
		for _, rc := range l.Requests {
			if rc.Outcome == "refused" && rc.Code == serialproto.CodeUnexpected.String() {
				n += rc.N
			}
		}
	}
	return n
}
