package daemon

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// staleResultAck is the link of TestCDeviceTools/udp-lossy-duplicating's
// flake, made deterministic: the ACK of call 0's result is held back until
// TOOL_CALL 1 has passed (a reordering link), and call 1's result is lost
// once. The late ACK then comes just after call 1's result went out; an
// ACK names no call (§16).
type staleResultAck struct {
	device.Transport
	held      *serialproto.Frame // call 0's result's ACK, held back
	heldData  []byte
	result0   bool // call 0's result was sent
	lost1     bool // call 1's result was lost once
	released  bool
	afterCall bool // TOOL_CALL 1 went up to the client: release the ACK next
}

func (s *staleResultAck) Send(raw []byte) error {
	if f, err := serialproto.Decode(raw); err == nil && f.Cmd == serialproto.CmdToolResult && len(f.Data) > serialproto.FragmentHeaderLen {
		switch f.Data[serialproto.FragmentHeaderLen] {
		case 0:
			s.result0 = true
		case 1:
			if !s.lost1 {
				s.lost1 = true
				return nil
			}
		}
	}
	return s.Transport.Send(raw)
}

func (s *staleResultAck) Recv(deadline time.Time) (serialproto.Frame, error) {
	if s.afterCall && s.held != nil {
		f := *s.held
		s.held, s.afterCall, s.released = nil, false, true
		return f, nil
	}
	for {
		f, err := s.Transport.Recv(deadline)
		if err != nil {
			return f, err
		}
		switch {
		case f.Cmd == serialproto.CmdAck && s.result0 && s.held == nil && !s.released:
			s.heldData = append(s.heldData[:0], f.Data...)
			c := f
			c.Data = s.heldData
			s.held = &c
			continue
		case f.Cmd == serialproto.CmdToolCall && s.held != nil:
			s.afterCall = true
		}
		return f, nil
	}
}

// TestToolResultStaleAck: call 0's ACK, arriving after call 1's result
// was sent and lost, does not end that result's probes: the daemon gets
// it and the answer completes. Taken as call 1's ACK, it stopped the
// retransmission and the request ended in TOOL_TIMEOUT.
func TestToolResultStaleAck(t *testing.T) {
	e := &toolEngine{script: []backends.ToolCall{readSoil, readSoil}}
	_, addr := startToolDaemon(t, Config{ToolTimeout: 2 * time.Second}, e)
	link := &staleResultAck{}
	c, _ := dialVia(t, addr, device.Config{DeviceID: "stale-ack", RTO: 50 * time.Millisecond},
		func(tr device.Transport) device.Transport { link.Transport = tr; return link })
	var runs atomic.Int64
	declare(t, c, sensorTools(&runs))
	text, _, err := ask(t, c, "two reads", toolsOn)
	if !link.released || !link.lost1 {
		t.Fatalf("the link did not play the case: ACK held and released %v, call 1's result lost %v", link.released, link.lost1)
	}
	if err != nil || text != "answer: 41 %" || runs.Load() != 2 {
		t.Fatalf("%q, %v; the handler ran %d times for 2 calls", text, err, runs.Load())
	}
}
