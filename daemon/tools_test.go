package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// toolEngine plays a model that calls tools: generation k of a request
// (k tool results after its prompt so far) makes script[k], or with loop
// script[0] every time; once the script is done it answers "answer: " and
// the last tool result. It records every request.
type toolEngine struct {
	script   []backends.ToolCall
	loop     bool
	noRecord bool // a benchmark's: keep no requests

	mu   sync.Mutex
	seen []backends.Request
}

func (e *toolEngine) Name() string { return "tool-engine" }
func (e *toolEngine) Model(context.Context, string) (backends.ModelInfo, error) {
	return backends.ModelInfo{Name: "tool-model", ContextLength: 2048}, nil
}
func (e *toolEngine) Healthy(context.Context) error { return nil }
func (e *toolEngine) Close() error                  { return nil }

func (e *toolEngine) Generate(ctx context.Context, req backends.Request, emit backends.Emit) (backends.Result, error) {
	if !e.noRecord {
		e.mu.Lock()
		e.seen = append(e.seen, req)
		e.mu.Unlock()
	}
	results, last := 0, "no tool"
	for _, m := range req.Messages {
		if m.Role == backends.RoleUser { // this request's results: those after its prompt
			results, last = 0, "no tool"
		}
		if m.Role == backends.RoleTool {
			results++
			last = m.Content
		}
	}
	if len(req.Tools) > 0 && (e.loop || results < len(e.script)) {
		c := e.script[0]
		if !e.loop {
			c = e.script[results]
		}
		return backends.Result{Tokens: 3, Call: &c}, nil
	}
	if err := emit([]byte("answer: " + last)); err != nil {
		return backends.Result{}, err
	}
	return backends.Result{Tokens: 2, TTFT: time.Millisecond}, ctx.Err()
}

func (e *toolEngine) requests() []backends.Request {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]backends.Request(nil), e.seen...)
}

func startToolDaemon(t *testing.T, cfg Config, e backends.Backend) (*Daemon, string) {
	t.Helper()
	d, err := New(cfg, e, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := runDaemon(t, d)
	return d, addr
}

const soilSchema = `{"type":"object","properties":{"sensor":{"enum":["soil","air"]}}}`

// sensorTools are a sensor read and a relay, counting their runs.
func sensorTools(runs *atomic.Int64) []device.Tool {
	return []device.Tool{
		{Name: "read_sensor", Description: "Reads a sensor.", Schema: soilSchema,
			Handler: func(_ context.Context, args []byte) (string, error) {
				runs.Add(1)
				if string(args) != `{"sensor":"soil"}` {
					return "", fmt.Errorf("unexpected arguments %s", args)
				}
				return "41 %", nil
			}},
		{Name: "relay", Description: "Switches the relay.",
			Handler: func(context.Context, []byte) (string, error) { return "", errors.New("relay stuck") }},
	}
}

var readSoil = backends.ToolCall{Tool: 0, Name: "read_sensor", Args: []byte(`{"sensor":"soil"}`)}

func toolsOn(m *serialproto.Infer) { m.Set = m.Set.With(serialproto.OptToolsOn) }

func declare(t *testing.T, c *device.Client, tools []device.Tool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.DeclareTools(ctx, tools); err != nil {
		t.Fatalf("TOOLS: %v", err)
	}
}

// TestToolRoundTrip: over real UDP, signed and not, the model calls the
// device's sensor, the device's handler runs once, and the answer that
// streams after it is built on the result; the engine got the declared
// tools, the call and the result in its conversation.
func TestToolRoundTrip(t *testing.T) {
	key := testKey(t, 7)
	for _, signed := range []bool{false, true} {
		t.Run(fmt.Sprint("signed=", signed), func(t *testing.T) {
			e := &toolEngine{script: []backends.ToolCall{readSoil}}
			cfg := Config{}
			dcfg := device.Config{DeviceID: "garden"}
			if signed {
				cfg.Keys = map[string]serialproto.Key{"garden": key}
				dcfg.Key = key
			}
			d, addr := startToolDaemon(t, cfg, e)
			c := dial(t, addr, dcfg)
			var runs atomic.Int64
			declare(t, c, sensorTools(&runs))
			text, done, err := ask(t, c, "Is the soil dry?", toolsOn)
			if err != nil {
				t.Fatal(err)
			}
			if text != "answer: 41 %" || runs.Load() != 1 || done.TextBytes != uint32(len(text)) {
				t.Fatalf("answer %q, handler ran %d times", text, runs.Load())
			}
			reqs := e.requests()
			if len(reqs) != 2 || len(reqs[0].Tools) != 2 || reqs[0].Tools[0].Name != "read_sensor" || string(reqs[0].Tools[0].Schema) != soilSchema {
				t.Fatalf("engine saw %+v", reqs)
			}
			msgs := reqs[1].Messages
			if n := len(msgs); n < 3 || msgs[n-2].ToolCall == nil || msgs[n-2].ToolCall.Name != "read_sensor" || msgs[n-1].Role != backends.RoleTool || msgs[n-1].Content != "41 %" {
				t.Fatalf("second generation's conversation: %+v", msgs)
			}
			if d.Stats().ToolCalls.Load() != 1 {
				t.Fatalf("ToolCalls = %d", d.Stats().ToolCalls.Load())
			}
			// Without TOOLS_ON the same device gets a plain answer.
			if text, _, err := ask(t, c, "plain"); err != nil || text != "answer: no tool" {
				t.Fatalf("plain ask: %q %v", text, err)
			}
		})
	}
}

// duplicating delivers every frame from the daemon twice and drops some,
// so TOOL_CALL copies reach the device again and again.
type duplicating struct {
	device.Transport
	r    *rand.Rand
	next *serialproto.Frame
	buf  []byte
}

func (d *duplicating) Recv(deadline time.Time) (serialproto.Frame, error) {
	if d.next != nil {
		f := *d.next
		d.next = nil
		return f, nil
	}
	for {
		f, err := d.Transport.Recv(deadline)
		if err != nil || d.r.Float64() >= 0.1 {
			if err == nil {
				d.buf = append(d.buf[:0], f.Data...)
				c := f
				c.Data = d.buf
				d.next = &c
			}
			return f, err
		}
	}
}

// TestToolCallRunsOnce: each TOOL_CALL arrives twice or more (duplicated by
// the network, retransmitted after losses), over three calls and several
// seeds: every call runs exactly once.
func TestToolCallRunsOnce(t *testing.T) {
	e := &toolEngine{script: []backends.ToolCall{readSoil, readSoil, readSoil}}
	_, addr := startToolDaemon(t, Config{}, e)
	for seed := range uint64(6) {
		c, _ := dialVia(t, addr, device.Config{DeviceID: fmt.Sprint("dup-", seed), RTO: 50 * time.Millisecond, Retries: 20},
			func(tr device.Transport) device.Transport {
				return &duplicating{Transport: &lossyTransport{Transport: tr, r: rand.New(rand.NewPCG(seed, 5)), loss: 0.1}, r: rand.New(rand.NewPCG(seed, 6))}
			})
		var runs atomic.Int64
		declare(t, c, sensorTools(&runs))
		text, _, err := ask(t, c, "three reads", toolsOn)
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		if text != "answer: 41 %" || runs.Load() != 3 {
			t.Fatalf("seed %d: %q, the handler ran %d times for 3 calls", seed, text, runs.Load())
		}
	}
}

func streamError(t *testing.T, err error) *serialproto.Error {
	t.Helper()
	var e *serialproto.Error
	if !errors.As(err, &e) {
		t.Fatalf("want an ERROR, got %v", err)
	}
	return e
}

// TestToolFailures: each failure §16 names ends the request in exactly one
// final chunk with its code, or is read by the model and the answer goes on.
func TestToolFailures(t *testing.T) {
	t.Run("timeout", func(t *testing.T) {
		d, addr := startToolDaemon(t, Config{ToolTimeout: 100 * time.Millisecond}, &toolEngine{script: []backends.ToolCall{readSoil}})
		c := dial(t, addr, device.Config{DeviceID: "slow"})
		declare(t, c, []device.Tool{{Name: "read_sensor", Schema: soilSchema, Handler: func(context.Context, []byte) (string, error) {
			time.Sleep(400 * time.Millisecond)
			return "late", nil
		}}})
		_, _, err := ask(t, c, "q", toolsOn)
		if e := streamError(t, err); e.Code != serialproto.CodeToolTimeout || !e.Stream() || d.Stats().ToolTimeouts.Load() != 1 {
			t.Fatalf("got %v, %d timeouts counted", e, d.Stats().ToolTimeouts.Load())
		}
	})
	t.Run("limit", func(t *testing.T) {
		_, addr := startToolDaemon(t, Config{MaxToolCalls: 3}, &toolEngine{script: []backends.ToolCall{readSoil}, loop: true})
		c := dial(t, addr, device.Config{DeviceID: "loop"})
		var runs atomic.Int64
		declare(t, c, sensorTools(&runs))
		_, _, err := ask(t, c, "q", toolsOn)
		if e := streamError(t, err); e.Code != serialproto.CodeToolLimit || !e.Stream() || runs.Load() != 3 {
			t.Fatalf("got %v after %d runs", e, runs.Load())
		}
	})
	t.Run("failed, undeclared and bad arguments are read by the model", func(t *testing.T) {
		e := &toolEngine{script: []backends.ToolCall{
			{Tool: 1, Name: "relay", Args: []byte("{}")},
			{Tool: -1, Name: "launch", Args: []byte("{}")},
			{Tool: 0, Name: "read_sensor", Args: []byte(`{"sensor":"moon"}`)},
		}}
		d, addr := startToolDaemon(t, Config{}, e)
		c := dial(t, addr, device.Config{DeviceID: "fail"})
		var runs atomic.Int64
		declare(t, c, sensorTools(&runs))
		text, _, err := ask(t, c, "q", toolsOn)
		if err != nil || !strings.HasPrefix(text, "answer: error: ") || runs.Load() != 0 {
			t.Fatalf("%q %v runs %d", text, err, runs.Load())
		}
		msgs := e.requests()[3].Messages
		var results []string
		for _, m := range msgs {
			if m.Role == backends.RoleTool {
				results = append(results, m.Content)
			}
		}
		if len(results) != 3 || results[0] != "error: relay stuck" || !strings.Contains(results[1], `no tool named "launch"`) || !strings.HasPrefix(results[2], "error: ") {
			t.Fatalf("the model read %q", results)
		}
		if d.Stats().ToolCalls.Load() != 1 { // only the relay's call reached the device
			t.Fatalf("%d TOOL_CALLs sent", d.Stats().ToolCalls.Load())
		}
	})
}

// TestToolDeclarations: refused declarations and requests, and
// declarations kept by device id across sessions.
func TestToolDeclarations(t *testing.T) {
	e := &toolEngine{script: []backends.ToolCall{readSoil}}
	_, addr := startToolDaemon(t, Config{}, e)
	c := dial(t, addr, device.Config{DeviceID: "decl"})
	if _, _, err := ask(t, c, "q", toolsOn); streamError(t, err).Code != serialproto.CodeUnsupportedOption {
		t.Fatalf("TOOLS_ON before TOOLS: %v", err)
	}
	ctx := context.Background()
	noop := func(context.Context, []byte) (string, error) { return "", nil }
	err := c.DeclareTools(ctx, []device.Tool{{Name: "x", Schema: `{"type":"string","pattern":"a"}`, Handler: noop}})
	if streamError(t, err).Code != serialproto.CodeUnsupportedOption {
		t.Fatalf("schema outside the subset: %v", err)
	}
	err = c.DeclareTools(ctx, []device.Tool{{Name: "x", Schema: `{"type":"string"}`, Handler: noop}})
	if streamError(t, err).Code != serialproto.CodeUnsupportedOption {
		t.Fatalf("arguments not an object: %v", err)
	}
	small := dial(t, addr, device.Config{DeviceID: "small", MaxData: 32})
	err = small.DeclareTools(ctx, []device.Tool{{Name: "x", Schema: `{"type":"object","properties":{"s":{"type":"string","maxLength":64}}}`, Handler: noop}})
	if streamError(t, err).Code != serialproto.CodeTooLarge {
		t.Fatalf("arguments larger than a 32-byte frame: %v", err)
	}
	var runs atomic.Int64
	declare(t, c, sensorTools(&runs))
	if _, _, err := ask(t, c, "q", toolsOn, func(m *serialproto.Infer) {
		m.Set = m.Set.With(serialproto.OptSchemaJSON)
		m.SchemaJSON = `{"type":"integer","minimum":0,"maximum":3}`
	}); streamError(t, err).Code != serialproto.CodeUnsupportedOption {
		t.Fatalf("TOOLS_ON with a schema: %v", err)
	}
	// A new session of the same device id (the device did not reboot, the
	// session expired): its tools are still declared.
	again := dial(t, addr, device.Config{DeviceID: "decl"})
	again.UseTools(sensorTools(&runs))
	if text, _, err := ask(t, again, "q", toolsOn); err != nil || text != "answer: 41 %" || runs.Load() != 1 {
		t.Fatalf("after a new HELLO: %q %v", text, err)
	}
}

// wire is a raw device session for the frame-level rules of §16.
type wire struct {
	t  *testing.T
	tr *device.UDP
}

func (w wire) send(cmd serialproto.Command, flags serialproto.Flags, seq uint8, m serialproto.Message) {
	w.t.Helper()
	body, err := m.AppendBody(nil)
	if err != nil {
		w.t.Fatal(err)
	}
	w.sendBody(cmd, flags, seq, body)
}

// sendBody sends body under cmd: as a message of fragments when flags
// has FRAGMENT (§6), else as one frame.
func (w wire) sendBody(cmd serialproto.Command, flags serialproto.Flags, seq uint8, body []byte) {
	w.t.Helper()
	datas := [][]byte{body}
	if flags&serialproto.FlagFragment != 0 {
		var err error
		if datas, err = serialproto.Fragments(body, serialproto.PieceSize(serialproto.MaxData, false)); err != nil {
			w.t.Fatal(err)
		}
	}
	w.sendData(cmd, flags, seq, datas...)
}

// sendData sends one frame under cmd for each data field.
func (w wire) sendData(cmd serialproto.Command, flags serialproto.Flags, seq uint8, datas ...[]byte) {
	w.t.Helper()
	for _, d := range datas {
		raw, err := serialproto.AppendFrame(nil, serialproto.Frame{Version: 1, Cmd: cmd, Flags: flags, Seq: seq, Data: d})
		if err != nil {
			w.t.Fatal(err)
		}
		if err := w.tr.Send(raw); err != nil {
			w.t.Fatal(err)
		}
	}
}

// fragments cuts m's body into fragments of 40-byte pieces, at least min.
func (w wire) fragments(m serialproto.Message, min int) [][]byte {
	w.t.Helper()
	body, err := m.AppendBody(nil)
	if err != nil {
		w.t.Fatal(err)
	}
	datas, err := serialproto.Fragments(body, 40)
	if err != nil || len(datas) < min {
		w.t.Fatalf("%d fragments, %v", len(datas), err)
	}
	return datas
}

// answer reads the answer stream of seq 5 to its DONE, which it
// acknowledges, and returns its text. Each message read goes to seen
// first (may be nil); a TOOL_CALL is acknowledged and given to onCall,
// ACKs and NACKs are passed over, anything else fails.
func (w wire) answer(seen func(serialproto.Message), onCall func(*serialproto.ToolCall)) string {
	w.t.Helper()
	var text string
	for {
		m := w.next()
		if seen != nil {
			seen(m)
		}
		switch m := m.(type) {
		case *serialproto.Ack, *serialproto.Nack:
		case *serialproto.ToolCall:
			if onCall == nil {
				w.t.Fatalf("unexpected %+v", m)
			}
			w.send(serialproto.CmdAck, 0, 5, &serialproto.Ack{Next: m.Chunk + 1, Window: 4})
			onCall(m)
		case *serialproto.Token:
			text += string(m.Text)
		case *serialproto.Done:
			w.send(serialproto.CmdAck, 0, 5, &serialproto.Ack{Next: m.Chunk + 1, Window: 4})
			return text
		default:
			w.t.Fatalf("unexpected %s %v", m.Command(), m)
		}
	}
}

// next returns the next frame's message, failing after 3 s.
func (w wire) next() serialproto.Message {
	w.t.Helper()
	f, err := w.tr.Recv(time.Now().Add(3 * time.Second))
	if err != nil {
		w.t.Fatal(err)
	}
	m, err := serialproto.ParseBody(f.Cmd, f.Data)
	if err != nil {
		w.t.Fatal(err)
	}
	return m
}

func (w wire) expect(want string) serialproto.Message {
	w.t.Helper()
	m := w.next()
	if got := fmt.Sprintf("%s %v", m.Command(), m); !strings.HasPrefix(got, want) {
		w.t.Fatalf("got %s, want %s…", got, want)
	}
	return m
}

// openToolCall declares the sensor tools on a raw session and starts a
// TOOLS_ON INFER (seq 5) up to its acknowledged TOOL_CALL.
func openToolCall(t *testing.T, e *toolEngine, cfg Config) (wire, *Daemon) {
	d, addr := startToolDaemon(t, cfg, e)
	w := wire{t, rawSession(t, addr, "raw")}
	var runs atomic.Int64
	decl := sensorTools(&runs)
	m := &serialproto.Tools{}
	for _, tl := range decl {
		m.Tools = append(m.Tools, serialproto.ToolDecl{Name: tl.Name, Description: tl.Description, Schema: []byte(tl.Schema)})
	}
	w.send(serialproto.CmdTools, serialproto.FlagFragment, 4, m)
	w.expect("ACK &{1 0")
	w.send(serialproto.CmdInfer, serialproto.FlagFragment, 5, &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptToolsOn), Prompt: "q"})
	w.expect("ACK &{1 0")
	call := w.expect("TOOL_CALL").(*serialproto.ToolCall)
	if call.Chunk != 0 || call.Call != 0 || call.Tool != 0 || string(call.Args) != `{"sensor":"soil"}` {
		t.Fatalf("TOOL_CALL %+v", call)
	}
	w.send(serialproto.CmdAck, 0, 5, &serialproto.Ack{Next: 1, Window: 4})
	return w, d
}

// TestToolWireRules: a copy of a result is acknowledged again and used
// once; a result after CANCEL, or for a call not outstanding, is
// UNEXPECTED; a result above 1024 bytes is TOO_LARGE and ends the stream
// with TOOL_LIMIT; TOOLS and TOOL_RESULT must be fragmented.
func TestToolWireRules(t *testing.T) {
	t.Run("copy of a result", func(t *testing.T) {
		e := &toolEngine{script: []backends.ToolCall{readSoil}}
		w, _ := openToolCall(t, e, Config{})
		w.send(serialproto.CmdToolResult, serialproto.FlagFragment, 5, &serialproto.ToolResult{Call: 7, Result: []byte("?")})
		w.expect("ERROR UNEXPECTED")
		for range 2 {
			w.send(serialproto.CmdToolResult, serialproto.FlagFragment, 5, &serialproto.ToolResult{Call: 0, Result: []byte("12")})
		}
		w.expect("ACK &{1 0")
		if text := w.answer(nil, nil); text != "answer: 12" || len(e.requests()) != 2 {
			t.Fatalf("%q after %d generations", text, len(e.requests()))
		}
	})
	t.Run("cancel while outstanding", func(t *testing.T) {
		w, _ := openToolCall(t, &toolEngine{script: []backends.ToolCall{readSoil}}, Config{})
		w.send(serialproto.CmdCancel, 0, 5, &serialproto.Cancel{})
		if e := w.expect("ERROR CANCELLED").(*serialproto.Error); !e.Stream() || e.Chunk != 1 {
			t.Fatalf("%+v", e)
		}
		w.send(serialproto.CmdAck, 0, 5, &serialproto.Ack{Next: 2, Window: 4})
		w.send(serialproto.CmdToolResult, serialproto.FlagFragment, 5, &serialproto.ToolResult{Call: 0, Result: []byte("12")})
		w.expect("ERROR UNEXPECTED")
	})
	t.Run("result too large", func(t *testing.T) {
		w, _ := openToolCall(t, &toolEngine{script: []backends.ToolCall{readSoil}}, Config{})
		w.sendBody(serialproto.CmdToolResult, serialproto.FlagFragment, 5, append([]byte{0, 0}, strings.Repeat("x", 1100)...))
		w.expect("ERROR TOO_LARGE")
		if e := w.expect("ERROR TOOL_LIMIT").(*serialproto.Error); !e.Stream() || e.Chunk != 1 {
			t.Fatalf("%+v", e)
		}
		w.send(serialproto.CmdAck, 0, 5, &serialproto.Ack{Next: 2, Window: 4})
	})
	t.Run("unfragmented", func(t *testing.T) {
		w, _ := openToolCall(t, &toolEngine{script: []backends.ToolCall{readSoil}}, Config{})
		w.send(serialproto.CmdToolResult, 0, 5, &serialproto.ToolResult{Call: 0})
		w.expect("ERROR MALFORMED")
		w.send(serialproto.CmdTools, 0, 6, &serialproto.Tools{Tools: []serialproto.ToolDecl{{Name: "a"}}})
		w.expect("ERROR MALFORMED")
		w.send(serialproto.CmdCancel, 0, 5, &serialproto.Cancel{})
		w.expect("ERROR CANCELLED")
		w.send(serialproto.CmdAck, 0, 5, &serialproto.Ack{Next: 2, Window: 4})
	})
}

// TestToolStoreBound: declarations are kept for at most MaxToolDevices
// device ids; a new one beyond it replaces the oldest declaration, and a
// device declaring again becomes the newest.
func TestToolStoreBound(t *testing.T) {
	var st toolStore
	sets := map[string]*toolSet{"a": {}, "b": {}, "c": {}}
	st.put("a", sets["a"], 2)
	st.put("b", sets["b"], 2)
	st.put("a", sets["a"], 2) // a again: b is now the oldest
	st.put("c", sets["c"], 2)
	if st.get("b") != nil || st.get("a") != sets["a"] || st.get("c") != sets["c"] || len(st.sets) != 2 {
		t.Fatalf("kept %v", st.order)
	}
}

// TestToolMessageGapNacked: a TOOL_RESULT (and a TOOLS) whose fragments
// after the first were lost gets NACK MISSING half an RTO after the
// daemon last heard of it (§6), as an INFER does — without it the device
// learned of the gap only when its own timer probed, and a device whose
// probe was lost as well waited out the tool timeout. Completed, the
// result is taken and the answer streams on.
func TestToolMessageGapNacked(t *testing.T) {
	e := &toolEngine{script: []backends.ToolCall{readSoil}}
	w, _ := openToolCall(t, e, Config{})
	sendGapped := func(cmd serialproto.Command, seq uint8, m serialproto.Message) {
		t.Helper()
		datas := w.fragments(m, 3)
		var want []byte
		for i := 1; i < len(datas); i++ {
			want = append(want, byte(i))
		}
		w.sendData(cmd, serialproto.FlagFragment, seq, datas[0])
		if n, ok := w.next().(*serialproto.Nack); !ok || n.Reason != serialproto.NackMissing || !bytes.Equal(n.Missing, want) {
			t.Fatalf("%v after fragment 0 of %d: want NACK MISSING %v", n, len(datas), want)
		}
		w.sendData(cmd, serialproto.FlagFragment, seq, datas[1:]...)
	}
	result := strings.Repeat("4", 100)
	sendGapped(serialproto.CmdToolResult, 5, &serialproto.ToolResult{Call: 0, Result: []byte(result)})
	if text := w.answer(nil, nil); text != "answer: "+result || len(e.requests()) != 2 {
		t.Fatalf("%q after %d generations", text, len(e.requests()))
	}

	decl := &serialproto.Tools{Tools: []serialproto.ToolDecl{{Name: "read_sensor", Description: "Reads a sensor.", Schema: []byte(soilSchema)}}}
	sendGapped(serialproto.CmdTools, 6, decl)
	for {
		m := w.next()
		if _, ok := m.(*serialproto.Nack); ok {
			continue // repeated before the repair
		}
		if _, ok := m.(*serialproto.Ack); !ok {
			t.Fatalf("TOOLS repaired: %v, want its ACK", m)
		}
		break
	}
}

// TestToolResultLateFragmentCopy: a copy of a fragment of the result
// already taken, arriving late (a duplicating link), does not spoil the
// next call's result: that one, in a different number of fragments, is
// taken — it was refused MALFORMED (the fragment count changed, the copy
// having started a new message under (TOOL_RESULT, seq)), the device
// stopped resending it, and the request ended in TOOL_TIMEOUT. Nor does
// such a copy, arriving while a call is outstanding, draw a NACK on the
// half-RTO timer.
func TestToolResultLateFragmentCopy(t *testing.T) {
	e := &toolEngine{script: []backends.ToolCall{readSoil, readSoil}}
	w, _ := openToolCall(t, e, Config{})
	datas := w.fragments(&serialproto.ToolResult{Call: 0, Result: []byte(strings.Repeat("4", 100))}, 2)
	w.sendData(serialproto.CmdToolResult, serialproto.FlagFragment, 5, datas...)
	late := false
	text := w.answer(func(serialproto.Message) {
		if !late { // the result is in (its ACK or the next call came): the late copy
			w.sendData(serialproto.CmdToolResult, serialproto.FlagFragment, 5, datas[1])
			late = true
		}
	}, func(m *serialproto.ToolCall) {
		if m.Call != 1 {
			t.Fatalf("%+v, want call 1", m)
		}
		w.send(serialproto.CmdToolResult, serialproto.FlagFragment, 5, &serialproto.ToolResult{Call: 1, Result: []byte("12")})
	})
	if text != "answer: 12" || len(e.requests()) != 3 {
		t.Fatalf("%q after %d generations", text, len(e.requests()))
	}
	// A late copy while a call is outstanding, whose call the daemon cannot
	// tell (not fragment 0): no NACK for it on the timer — the device,
	// with no result outstanding, would read it as one for its prompt.
	w.send(serialproto.CmdInfer, serialproto.FlagFragment, 6, &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptToolsOn), Prompt: "q"})
	w.expect("ACK &{1 0")
	if c := w.expect("TOOL_CALL").(*serialproto.ToolCall); c.Call != 0 {
		t.Fatalf("%+v", c)
	}
	w.send(serialproto.CmdAck, 0, 6, &serialproto.Ack{Next: 1, Window: 4})
	w.sendData(serialproto.CmdToolResult, serialproto.FlagFragment, 6, datas[1])
	if f, err := w.tr.Recv(time.Now().Add(300 * time.Millisecond)); err == nil {
		t.Fatalf("after a fragment of unknown call: %v", f)
	}
	w.send(serialproto.CmdCancel, 0, 6, &serialproto.Cancel{})
	end := w.expect("ERROR CANCELLED").(*serialproto.Error)
	w.send(serialproto.CmdAck, 0, 6, &serialproto.Ack{Next: end.Chunk + 1, Window: 4})
}

// TestToolRequestPaysEveryGeneration: a device with a token budget pays
// for every generation of a request with tools, not for its reservation
// alone: 3 calls of 3 tokens and an answer of 2 under MAX_TOKENS 5 spend
// 11 of 10 tokens, and the next INFER is RATE_LIMITED (before, 5 were
// charged and it ran).
func TestToolRequestPaysEveryGeneration(t *testing.T) {
	e := &toolEngine{script: []backends.ToolCall{readSoil, readSoil, readSoil}}
	_, addr := startToolDaemon(t, Config{Policy: AccessPolicy{Devices: map[string]DeviceRule{
		"meter": {TokenBudget: 10, BudgetPeriod: time.Hour},
	}}}, e)
	c := dial(t, addr, device.Config{DeviceID: "meter"})
	var runs atomic.Int64
	declare(t, c, sensorTools(&runs))
	maxTokens := func(m *serialproto.Infer) {
		m.Set = m.Set.With(serialproto.OptMaxTokens)
		m.MaxTokens = 5
	}
	if text, done, err := ask(t, c, "q", toolsOn, maxTokens); err != nil || text != "answer: 41 %" || done.Tokens != 11 || runs.Load() != 3 {
		t.Fatalf("%q %+v %v after %d runs", text, done, err, runs.Load())
	}
	if _, _, err := ask(t, c, "again", maxTokens); errCode(err) != serialproto.CodeRateLimited {
		t.Fatalf("11 of 10 tokens spent: %v, want RATE_LIMITED", err)
	}
}

// TestToolTurnsKeptInHistory: the calls and results of a request with
// tools stay in the session's history between its prompt and its answer
// (§16), so the next request — with tools or not — reads them; before, it
// saw the question and the answer alone.
func TestToolTurnsKeptInHistory(t *testing.T) {
	e := &toolEngine{script: []backends.ToolCall{readSoil}}
	_, addr := startToolDaemon(t, Config{}, e)
	c := dial(t, addr, device.Config{DeviceID: "hist"})
	var runs atomic.Int64
	declare(t, c, sensorTools(&runs))
	if text, _, err := ask(t, c, "q", toolsOn); err != nil || text != "answer: 41 %" {
		t.Fatalf("%q %v", text, err)
	}
	if text, _, err := ask(t, c, "and now?"); err != nil || text != "answer: no tool" {
		t.Fatalf("plain ask after: %q %v", text, err)
	}
	reqs := e.requests()
	var got []string
	for _, m := range reqs[len(reqs)-1].Messages {
		s := string(m.Role) + ":" + m.Content
		if m.ToolCall != nil {
			s += "call " + m.ToolCall.Name + string(m.ToolCall.Args)
		}
		got = append(got, s)
	}
	want := []string{"user:q", `assistant:call read_sensor{"sensor":"soil"}`, "tool:41 %", "assistant:answer: 41 %", "user:and now?"}
	if !slices.Equal(got, want) {
		t.Fatalf("the next request read\n%q\nwant\n%q", got, want)
	}
}

// TestLastTurns: the history is cut on a prompt, never inside a turn
// with tool calls.
func TestLastTurns(t *testing.T) {
	u, a := backends.Message{Role: backends.RoleUser}, backends.Message{Role: backends.RoleAssistant}
	call, res := backends.Message{Role: backends.RoleAssistant, ToolCall: &readSoil}, backends.Message{Role: backends.RoleTool}
	h := []backends.Message{u, a, u, call, res, call, res, a, u, a}
	for _, tc := range []struct{ n, want int }{{10, 10}, {9, 8}, {8, 8}, {7, 2}, {3, 2}, {2, 2}, {1, 0}, {0, 0}} {
		got := lastTurns(h, tc.n)
		if len(got) != tc.want || (len(got) > 0 && got[0].Role != backends.RoleUser) {
			t.Errorf("last %d: %d messages, want %d, beginning with a prompt", tc.n, len(got), tc.want)
		}
	}
}
