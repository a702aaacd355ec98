package daemon

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/mcpd-project/mcpd/serialproto"
)

// TestStatsOneCallPerEvent: each recording call moves its total and its
// link's series together, so /status and the metrics cannot disagree.
func TestStatsOneCallPerEvent(t *testing.T) {
	var st Stats
	st.frame("udp:a", FrameIn, serialproto.CmdPing)
	st.frame("udp:a", FrameOut, serialproto.CmdPong)
	st.badFrame("serial:x", fmt.Errorf("decode: %w", serialproto.ErrBadCRC))
	st.badFrame("serial:x", serialproto.ErrTooLong)
	st.badFrame("udp:a", serialproto.ErrShortFrame)
	st.retransmit("serial:x")
	st.linkStats("serial:x", 7, 1)
	st.sessionOpened("udp:a")
	st.sessionOpened("udp:a")
	st.sessionClosed("udp:a")
	st.refused("udp:a", serialproto.CodeBusy)
	st.ended("udp:a", nil, 0, false)
	st.ended("udp:a", context.Canceled, serialproto.CodeCancelled, true)
	st.ended("http", context.DeadlineExceeded, serialproto.CodeTimeout, false)
	st.generated("engine", 5)
	st.generated("engine", 0)

	c := st.Counters()
	if c.FramesIn != 1 || c.FramesOut != 1 || c.BadFrames != 3 || c.Retransmits != 1 ||
		c.Done != 1 || c.Canceled != 1 || c.Failed != 1 || st.Sessions.Load() != 1 {
		t.Fatalf("totals %+v, sessions %d", c, st.Sessions.Load())
	}
	links := st.Links()
	if got := []string{links[0].Link, links[1].Link, links[2].Link}; !slices.Equal(got, []string{"http", "serial:x", "udp:a"}) {
		t.Fatalf("links %v", got)
	}
	serial, udp := links[1], links[2]
	if !maps.Equal(serial.BadFrames, map[string]int64{"crc": 1, "too_long": 1}) || serial.Retransmits != 1 ||
		serial.SkippedBytes != 7 || serial.Reconnects != 1 || serial.HadSessions {
		t.Fatalf("serial link %+v", serial)
	}
	if !maps.Equal(udp.BadFrames, map[string]int64{"malformed": 1}) || udp.Sessions != 1 || !udp.HadSessions ||
		!slices.Equal(udp.Frames, []FrameCount{{FrameIn, serialproto.CmdPing, 1}, {FrameOut, serialproto.CmdPong, 1}}) {
		t.Fatalf("udp link %+v", udp)
	}
	wantRequests := []RequestCount{{"cancelled", "CANCELLED", 1}, {"done", "none", 1}, {"refused", "BUSY", 1}}
	if !slices.Equal(udp.Requests, wantRequests) {
		t.Fatalf("udp requests %+v", udp.Requests)
	}
	if !slices.Equal(links[0].Requests, []RequestCount{{"timeout", "TIMEOUT", 1}}) {
		t.Fatalf("http requests %+v", links[0].Requests)
	}
	if !maps.Equal(st.Tokens(), map[string]int64{"engine": 5}) {
		t.Fatalf("tokens %v", st.Tokens())
	}
}
