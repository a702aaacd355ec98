package daemon

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// The answers docs/protocol.md gives where a second implementer used to
// have to guess (issue 17), each pinned by what the daemon does.

// TestCopyOfFinishedInferGetsOnlyItsAck: once the device has acknowledged
// the final chunk, a copy of its INFER is answered with the ACK again and
// nothing else — no stream, no final chunk (§5, §7.3).
func TestCopyOfFinishedInferGetsOnlyItsAck(t *testing.T) {
	e := &testEngine{}
	_, addr := startDaemon(t, Config{}, e)
	tr := &capturingTransport{}
	c, udp := dialVia(t, addr, device.Config{DeviceID: "finished"}, tr.wrap)
	if _, _, err := ask(t, c, "once"); err != nil {
		t.Fatal(err)
	}
	copyOf := tr.infers[0]
	if f := answer(t, udp, copyOf, copyOf[5]); f.Cmd != serialproto.CmdAck {
		t.Fatalf("copy of a finished INFER: %v, want its ACK", f)
	}
	if f, err := udp.Recv(time.Now().Add(400 * time.Millisecond)); err == nil { // past the UDP RTO
		t.Fatalf("after the ACK: %v, want nothing", f)
	}
	if n := e.calls.Load(); n != 1 {
		t.Fatalf("the engine ran %d times", n)
	}
}

// TestReplacedSessionsStreamEndsSilently: a HELLO with a new boot nonce
// replaces the session mid-answer. The old stream gets nothing more — no
// retransmission, no final chunk (§10): the device that rebooted has
// forgotten it, and a chunk under an old seq could pass for an answer to
// the new session's request with the same seq.
func TestReplacedSessionsStreamEndsSilently(t *testing.T) {
	e := &testEngine{hold: make(chan struct{})}
	d, addr := startDaemon(t, Config{}, e)
	log := &recorder{}
	c, _ := dialVia(t, addr, device.Config{DeviceID: "rebooter"}, log.wrap)
	const seq = 9
	if f := answer(t, log, rawInfer(t, seq, "a long answer"), seq); f.Cmd != serialproto.CmdAck {
		t.Fatalf("INFER: %v", f)
	}
	for len(log.withSeq(seq, 0)) < 2 { // the ACK and chunk 0, which the device never acknowledges
		if _, err := log.Recv(time.Now().Add(2 * time.Second)); err != nil {
			t.Fatalf("chunk 0: %v", err)
		}
	}
	if err := c.Hello(context.Background()); err != nil { // the device rebooted: a new boot nonce
		t.Fatal(err)
	}
	replaced := log.count()
	close(e.hold) // the engine would go on; the session's end has cancelled it
	waitFor(t, func() bool { return d.Stats().Failed.Load()+d.Stats().Canceled.Load() == 1 })
	time.Sleep(600 * time.Millisecond) // two of the stream's RTOs
	_, _ = log.Recv(time.Now().Add(10 * time.Millisecond))
	if late := log.withSeq(seq, replaced); len(late) > 0 {
		t.Fatalf("the replaced session's stream sent %v after the new WELCOME", late)
	}
}

// TestPromptAboveContextIsTooLargeAfterTheAck: a prompt longer than the
// engine's context is found out only when the engine runs it, after the
// ACK, so it ends the stream: ERROR TOO_LARGE with the STREAM flag as the
// final chunk (§12). A message above max_message is refused instead of the
// ACK.
func TestPromptAboveContextIsTooLargeAfterTheAck(t *testing.T) {
	e := &testEngine{contextWords: 4}
	d, addr := startDaemon(t, Config{MaxMessage: 600}, e)
	c := dial(t, addr, device.Config{DeviceID: "verbose"})
	_, _, err := ask(t, c, "far too many words for this context")
	var perr *serialproto.Error
	if !errors.As(err, &perr) || perr.Code != serialproto.CodeTooLarge || !perr.Stream() {
		t.Fatalf("prompt above the context: %v, want TOO_LARGE as the stream's final chunk", err)
	}
	// The device reads the cause with its figures, not Go's package
	// prefixes cut mid-word.
	if perr.Text != "prompt exceeds the context: 7 words, context 4" {
		t.Fatalf("ERROR text %q", perr.Text)
	}
	if d.Stats().Accepted.Load() != 1 {
		t.Fatal("the prompt above the context was not accepted (ACKed) first")
	}
	_, _, err = ask(t, c, strings.Repeat("x", 700))
	if !errors.As(err, &perr) || perr.Code != serialproto.CodeTooLarge || perr.Stream() {
		t.Fatalf("message above max_message: %v, want TOO_LARGE instead of the ACK", err)
	}
	if d.Stats().Accepted.Load() != 1 {
		t.Fatal("the message above max_message was accepted")
	}
}

// TestSignedOverUDPAnyLinkID: link_id is the sender's own number for the
// interface it sends from; the receiver keeps a replay window per value
// and reads nothing else into it (§9.1). A device on Wi-Fi (1) is served
// over UDP, and the daemon signs its frames with 0, on every link.
func TestSignedOverUDPAnyLinkID(t *testing.T) {
	key := testKey(t, 0x17)
	_, addr := startDaemon(t, Config{Keys: map[string]serialproto.Key{"wifi": key}}, &testEngine{})
	log := &recorder{}
	c, _ := dialVia(t, addr, device.Config{DeviceID: "wifi", Key: key, LinkID: 1}, log.wrap)
	if text, _, err := ask(t, c, "over wifi"); err != nil || text != answerFor("over wifi") {
		t.Fatalf("%q %v", text, err)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	for _, f := range log.frames {
		if f.Flags&serialproto.FlagSigned == 0 || len(f.Data) < serialproto.SignatureLen {
			t.Fatalf("an unsigned frame from the daemon: %v", f)
		}
		if link := f.Data[len(f.Data)-serialproto.SignatureLen]; link != 0 {
			t.Fatalf("%v signed with link_id %d, want 0", f, link)
		}
	}
}
