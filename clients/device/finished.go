package device

import (
	"context"

	"github.com/mcpd-project/mcpd/serialproto"
)

// finishedStream is an answer stream that ended: its request's seq and the
// ACK that acknowledged its final chunk.
type finishedStream struct {
	valid bool
	seq   uint8
	next  uint16
}

// cancel tells the daemon to stop request seq and waits a little for the
// stream's final chunk. It keeps acknowledging the TOKENs still arriving
// (next is the chunk expected), or a closed window would hold the final
// chunk back, and acknowledges the final chunk so the daemon can let go.
func (c *Client) cancel(seq uint8, next uint16) {
	ctx, stop := context.WithTimeout(context.Background(), 8*c.cfg.RTO)
	defer stop()
	_ = c.exchange(ctx, seq, func(int) error { return c.sendMsg(seq, &serialproto.Cancel{}) }, func(f serialproto.Frame, m serialproto.Message) (bool, error) {
		switch m := m.(type) {
		case *serialproto.Token, *serialproto.ToolCall: // a call is not run once cancelled
			if chunkIndex(m) == next {
				next++
			}
			return false, c.sendMsg(seq, &serialproto.Ack{Next: next, Window: c.cfg.Window})
		case *serialproto.Done:
			return true, c.sendMsg(seq, &serialproto.Ack{Next: m.Chunk + 1, Window: c.cfg.Window})
		case *serialproto.Error:
			if m.Stream() {
				return true, c.sendMsg(seq, &serialproto.Ack{Next: m.Chunk + 1, Window: c.cfg.Window})
			}
			return true, nil
		}
		return false, nil
	}, nil)
}

func (c *Client) finish(seq uint8, next uint16) {
	c.finished[c.nfin%len(c.finished)] = finishedStream{valid: true, seq: seq, next: next}
	c.nfin++
}

// reackFinished answers a chunk of a finished stream with that stream's
// final ACK again (§8.2: a duplicate chunk is acknowledged again). Without
// it a daemon whose final ACK was lost retransmits the final chunk until it
// gives up, holding one of the device's request places meanwhile. A final
// chunk (DONE, or a stream's ERROR) of an older stream than the last 32 is
// acknowledged too, with the next its own index gives: on a fast link a
// device finishes 32 requests within one of the daemon's RTOs, and a
// stream left retransmitting holds a place for seconds and, once the
// device's seqs wrap, may reach a newer request under its seq.
func (c *Client) reackFinished(f serialproto.Frame) {
	switch f.Cmd {
	case serialproto.CmdToken, serialproto.CmdDone, serialproto.CmdError:
	default:
		return
	}
	var fin *finishedStream
	for i := range c.finished { // the newest with this seq
		e := &c.finished[(c.nfin-1-i+2*len(c.finished))%len(c.finished)]
		if e.valid && e.seq == f.Seq {
			fin = e
			break
		}
	}
	if c.verifier != nil {
		var err error
		if f, _, _, err = c.verifier.Verify(f); err != nil {
			return
		}
	}
	next, ok := uint16(0), fin != nil
	if ok {
		next = fin.next
	} else {
		next, ok = finalChunk(f)
	}
	if ok {
		_ = c.sendMsg(f.Seq, &serialproto.Ack{Next: next, Window: c.cfg.Window})
	}
}

// finalChunk reports the ACK's next for a stream's final chunk: its index
// plus one.
func finalChunk(f serialproto.Frame) (uint16, bool) {
	m, err := serialproto.ParseBody(f.Cmd, f.Data)
	if err != nil {
		return 0, false
	}
	switch m := m.(type) {
	case *serialproto.Done:
		return m.Chunk + 1, true
	case *serialproto.Error:
		if m.Stream() {
			return m.Chunk + 1, true
		}
	}
	return 0, false
}

// chunkIndex is a TOKEN's or TOOL_CALL's index in its stream.
func chunkIndex(m serialproto.Message) uint16 {
	switch m := m.(type) {
	case *serialproto.Token:
		return m.Chunk
	case *serialproto.ToolCall:
		return m.Chunk
	}
	return 0
}
