package daemon

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// FuzzStreamAck: whatever ACKs a device sends — any next, window and SACK
// bitmap, in any order — the stream neither panics nor acknowledges chunks
// it never sent, and it still ends once the final chunk is acknowledged.
func FuzzStreamAck(f *testing.F) {
	f.Add([]byte{0, 1, 4, 0x80, 0, 0, 2, 4, 0xff, 0xff, 0, 30, 8, 0, 0})
	f.Add([]byte{0xff, 0xff, 255, 0xff, 0xff, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, sack := range []bool{false, true} {
			p := &recordPeer{}
			clk := newFakeClock()
			st := newStream(p, nil, clk, peerRTT(p, 8), sack, 1, 7, 32, 8, time.Millisecond, 3)
			_ = st.write([]byte(strings.Repeat("0123456789", 30)))
			st.finish(func(chunk uint16, n, crc uint32) serialproto.Message {
				return &serialproto.Done{Chunk: chunk, TextBytes: n, TextCRC32C: crc}
			})
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() { errc <- st.run(ctx) }()
			for b := in; len(b) >= 5; b = b[5:] {
				next := int(binary.BigEndian.Uint16(b))
				var bitmap []byte
				if b[3] != 0 || b[4] != 0 {
					bitmap = b[3:5]
					if b[4] == 0 {
						bitmap = b[3:4]
					}
				}
				st.ack(next, int(b[2]), bitmap)
				clk.Advance(time.Millisecond)
			}
			st.mu.Lock()
			n := len(st.frames)
			if st.acked > n || st.sent > n || st.highest > n || len(st.meta) != n {
				t.Fatalf("acked %d sent %d highest %d meta %d of %d chunks", st.acked, st.sent, st.highest, len(st.meta), n)
			}
			st.mu.Unlock()
			complete := false
			for range 500 { // the chunks are cut as the window opens: acknowledge until the final one
				st.mu.Lock()
				n := len(st.frames)
				st.mu.Unlock()
				if complete = st.ack(n, 8, nil); complete {
					break
				}
				time.Sleep(100 * time.Microsecond)
			}
			if !complete {
				t.Fatal("the stream never completed under cumulative ACKs of everything sent")
			}
			if err := <-errc; err != nil {
				t.Fatalf("run after the final ACK: %v", err)
			}
			cancel()
		}
	})
}
