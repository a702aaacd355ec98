// Package devicetest stands in for mcpd in tests and demos of device code:
// Peer is an MCPFrame peer on loopback UDP that opens sessions, reassembles
// fragmented INFERs and streams each prompt back as its answer, word by
// word, under the device's max_data and credit window, ending with a sound
// DONE. It answers PING, STATUS and BYE too.
//
// It is a protocol peer, not a model and not the daemon: no signing, no
// retransmission, no queue or limits. Tests of how a device copes with a
// real daemon run mcpd itself (daemon.New with a fake engine, or bin/mcpd).
package devicetest

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// Peer is an echoing MCPFrame peer on a loopback UDP port.
type Peer struct {
	conn *net.UDPConn
	done chan struct{}
	once sync.Once
}

// NewPeer listens on a free port of 127.0.0.1 and serves until Close.
func NewPeer() (*Peer, error) {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	p := &Peer{conn: conn, done: make(chan struct{})}
	go p.serve()
	return p, nil
}

// Addr is the peer's address, for device.DialUDP.
func (p *Peer) Addr() string { return p.conn.LocalAddr().String() }

// Close stops the peer and waits until it has.
func (p *Peer) Close() error {
	var err error
	p.once.Do(func() { err = p.conn.Close() })
	<-p.done
	return err
}

// session is one device's state, by its address.
type session struct {
	maxData int
	window  int
	reasm   *serialproto.Reassembler
	st      *stream
}

// stream is the answer being sent.
type stream struct {
	seq    uint8
	chunks [][]byte // the data fields of TOKEN… and the final DONE
	next   int      // first chunk not yet acknowledged
	sent   int      // chunks sent so far
	window int
}

func (p *Peer) serve() {
	defer close(p.done)
	var (
		in       [serialproto.MaxFrameLen + 1]byte
		out      []byte
		sessions = map[netip.AddrPort]*session{}
	)
	for {
		n, addr, err := p.conn.ReadFromUDPAddrPort(in[:])
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		send := func(cmd serialproto.Command, seq uint8, data []byte) {
			var err error
			if out, err = serialproto.AppendFrame(out[:0], serialproto.Frame{Version: serialproto.Version1, Cmd: cmd, Seq: seq, Data: data}); err == nil {
				_, _ = p.conn.WriteToUDPAddrPort(out, addr)
			}
		}
		sendMsg := func(seq uint8, m serialproto.Message) {
			if body, err := m.AppendBody(nil); err == nil {
				send(m.Command(), seq, body)
			}
		}
		s := sessions[addr]
		if s == nil {
			s = &session{maxData: serialproto.MaxData, window: 1, reasm: serialproto.NewReassembler(serialproto.ReassemblerConfig{})}
			sessions[addr] = s
		}
		pump := func() { // send what the device's window allows
			for st := s.st; st != nil && st.sent < len(st.chunks) && st.sent < st.next+st.window; st.sent++ {
				cmd := serialproto.CmdToken
				if st.sent == len(st.chunks)-1 {
					cmd = serialproto.CmdDone
				}
				send(cmd, st.seq, st.chunks[st.sent])
			}
		}
		f, err := serialproto.Decode(in[:n])
		if err != nil {
			continue
		}
		body, fragments := f.Data, 1
		if f.Flags&serialproto.FlagFragment != 0 { // an INFER message (§6)
			if body, _, err = s.reasm.Add(time.Now(), f.Cmd, f.Seq, f.Data); err != nil || body == nil {
				continue
			}
			fragments = int(f.Data[1])
		}
		m, err := serialproto.ParseBody(f.Cmd, body)
		if err != nil {
			sendMsg(f.Seq, serialproto.NewError(serialproto.CodeMalformed, "bad body"))
			continue
		}
		switch m := m.(type) {
		case *serialproto.Hello:
			s.maxData, s.window, s.st = int(m.MaxData), int(m.Window), nil
			sendMsg(f.Seq, &serialproto.Welcome{Version: 1, MaxData: serialproto.MaxData, Window: 255, HeartbeatMS: 5000,
				MaxMessage: serialproto.DefaultMaxMessage, DaemonNonce: 1})
		case *serialproto.Infer:
			sendMsg(f.Seq, &serialproto.Ack{Next: uint16(fragments)}) // §11.9: the fragment count
			s.st = &stream{seq: f.Seq, chunks: echoChunks(m.Prompt, s.maxData), window: s.window}
			pump()
		case *serialproto.Ack:
			if st := s.st; st != nil && f.Seq == st.seq {
				st.next, st.window = max(st.next, int(m.Next)), int(m.Window)
				pump()
			}
		case *serialproto.Ping:
			sendMsg(f.Seq, &serialproto.Pong{Data: m.Data})
		case *serialproto.Status:
			sendMsg(f.Seq, &serialproto.StatusReply{State: serialproto.StateReady, Backend: "echo", Model: "echo"})
		case *serialproto.Bye:
			sendMsg(f.Seq, &serialproto.Bye{})
			delete(sessions, addr)
		default:
			sendMsg(f.Seq, serialproto.NewError(serialproto.CodeUnexpected, "not handled by the echo peer"))
		}
	}
}

// echoChunks is the answer Peer streams for prompt: the prompt cut, word
// by word as an engine emits tokens, into TOKEN bodies that fit maxData
// without splitting a UTF-8 character, then the DONE body with the text's
// size and CRC-32C and one token per word.
func echoChunks(prompt string, maxData int) [][]byte {
	var tb serialproto.TextBuffer
	var chunks [][]byte
	var all []byte
	limit := serialproto.BodyLimit(maxData, false) - 2
	words := strings.SplitAfter(prompt, " ")
	for i, w := range words {
		_, _ = tb.WriteString(w)
		final := i == len(words)-1
		for tb.Len() >= limit || (final && tb.Len() > 0) {
			text := tb.Next(nil, limit, final)
			if len(text) == 0 {
				break
			}
			all = append(all, text...)
			body, _ := (&serialproto.Token{Chunk: uint16(len(chunks)), Text: text}).AppendBody(nil)
			chunks = append(chunks, body)
		}
	}
	done, _ := (&serialproto.Done{Chunk: uint16(len(chunks)), Reason: serialproto.StopEOS, Tokens: uint32(len(words)),
		TextBytes: uint32(len(all)), TextCRC32C: serialproto.CRC32C(all)}).AppendBody(nil)
	return append(chunks, done)
}
