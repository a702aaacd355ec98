package serialproto

import (
	"bytes"
	"encoding/hex"
	"flag"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.txt and the examples in docs/protocol.md")

const vectorsPath = "testdata/vectors.txt"

// TestVectors regenerates the test-vector file from the reference
// implementation and fails if the committed file differs: firmware in any
// language is checked against that file, so it must never drift from the
// code. Run with -update to rewrite it after a deliberate change.
func TestVectors(t *testing.T) {
	checkVectorFile(t, generatedFile(t, vectorsPath, generateVectors(t), "TestVectors"))
}

type vecWriter struct {
	t *testing.T
	b bytes.Buffer
}

func (w *vecWriter) comment(s string) { fmt.Fprintf(&w.b, "\n# %s\n", s) }

func (w *vecWriter) line(kind string, kv ...string) {
	w.b.WriteString(kind)
	for _, f := range kv {
		if strings.ContainsAny(f, " \n") {
			w.t.Fatalf("vector field %q contains a space", f)
		}
		w.b.WriteString(" " + f)
	}
	w.b.WriteString("\n")
}

func hx(b []byte) string { return hex.EncodeToString(b) }

// messages writes msg vectors: bodies that parse to their fields, and
// bodies that must be refused with their error class.
func (w *vecWriter) messages(valid []namedMessage, invalid []badBody) {
	for _, v := range valid {
		body := mustBody(w.t, v.m)
		w.line("msg", append([]string{"name=" + v.name, "cmd=" + v.m.Command().String(), "ok=1", "body=" + hx(body)}, messageFields(v.m)...)...)
	}
	for _, v := range invalid {
		w.line("msg", "name="+v.name, "cmd="+v.cmd.String(), "ok=0", "err="+v.err, "body="+hx(v.body))
	}
}

func mustFrame(t testing.TB, f Frame) []byte {
	t.Helper()
	b, err := AppendFrame(nil, f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustBody(t testing.TB, m Message) []byte {
	t.Helper()
	b, err := m.AppendBody(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func frameFields(f Frame) []string {
	return []string{
		"ver=" + strconv.Itoa(int(f.Version)), "cmd=" + strconv.Itoa(int(f.Cmd)),
		"flags=" + strconv.Itoa(int(f.Flags)), "seq=" + strconv.Itoa(int(f.Seq)), "data=" + hx(f.Data),
	}
}

func itoa[T ~uint8 | ~uint16 | ~uint32](v T) string { return strconv.FormatUint(uint64(v), 10) }

// messageFields lists a message's fields by their docs/protocol.md §11 names.
func messageFields(m Message) []string {
	switch m := m.(type) {
	case *Hello:
		return []string{"min_version=" + itoa(m.MinVersion), "max_version=" + itoa(m.MaxVersion), "max_data=" + itoa(m.MaxData),
			"features=" + itoa(m.Features), "window=" + itoa(m.Window), "boot_nonce=" + itoa(m.BootNonce), "device_id=" + hx([]byte(m.DeviceID))}
	case *Welcome:
		return []string{"version=" + itoa(m.Version), "max_data=" + itoa(m.MaxData), "features=" + itoa(m.Features), "window=" + itoa(m.Window),
			"heartbeat_ms=" + itoa(m.HeartbeatMS), "max_message=" + itoa(m.MaxMessage), "daemon_nonce=" + itoa(m.DaemonNonce)}
	case *Ping:
		return []string{"data=" + hx(m.Data)}
	case *Pong:
		return []string{"data=" + hx(m.Data)}
	case *Token:
		return []string{"chunk=" + itoa(m.Chunk), "text=" + hx(m.Text)}
	case *Done:
		return []string{"chunk=" + itoa(m.Chunk), "reason=" + itoa(m.Reason), "tokens=" + itoa(m.Tokens), "prompt_tokens=" + itoa(m.PromptTokens),
			"ttft_ms=" + itoa(m.TTFTMS), "duration_ms=" + itoa(m.DurationMS), "text_bytes=" + itoa(m.TextBytes), "text_crc32c=" + itoa(m.TextCRC32C)}
	case *Error:
		return []string{"code=" + itoa(m.Code), "flags=" + itoa(m.Flags), "chunk=" + itoa(m.Chunk), "text=" + hx([]byte(m.Text))}
	case *Ack:
		return []string{"next=" + itoa(m.Next), "window=" + itoa(m.Window), "sack=" + hx(m.SACK)}
	case *Nack:
		idx := make([]string, len(m.Missing))
		for i, v := range m.Missing {
			idx[i] = itoa(v)
		}
		return []string{"reason=" + itoa(m.Reason), "indexes=" + strings.Join(idx, ",")}
	case *StatusReply:
		out := []string{"state=" + itoa(m.State), "load=" + itoa(m.LoadPct), "queue=" + itoa(m.Queue),
			"backend=" + hx([]byte(m.Backend)), "model=" + hx([]byte(m.Model))}
		if !m.Extended {
			return out
		}
		out = append(out, "extended=1")
		for _, f := range []struct {
			name string
			c    *CacheFigures
		}{{"kv_cache", m.KV}, {"response_cache", m.Responses}} {
			if f.c != nil {
				out = append(out, fmt.Sprintf("%s=%d,%d,%d,%d", f.name, f.c.Hits, f.c.Misses, f.c.Evictions, f.c.Bytes))
			}
		}
		return out
	case *Infer:
		var out []string
		add := func(t OptionType, name, v string) {
			if m.Set.Has(t) {
				out = append(out, name+"="+v)
			}
		}
		add(OptModel, "model", hx([]byte(m.Model)))
		add(OptMaxTokens, "max_tokens", itoa(m.MaxTokens))
		add(OptTemperature, "temperature", itoa(m.Temperature))
		add(OptSeed, "seed", itoa(m.Seed))
		add(OptTopK, "top_k", itoa(m.TopK))
		add(OptTopP, "top_p", itoa(m.TopP))
		add(OptMinP, "min_p", itoa(m.MinP))
		add(OptRepeatPenalty, "repeat_penalty", itoa(m.RepeatPenalty))
		add(OptNewChat, "new_chat", "")
		add(OptSystem, "system", hx([]byte(m.System)))
		add(OptDeadlineMS, "deadline_ms", itoa(m.DeadlineMS))
		add(OptContext, "context", itoa(m.Context))
		add(OptSchema, "schema", itoa(m.SchemaID))
		add(OptSchemaJSON, "schema_json", hx([]byte(m.SchemaJSON)))
		add(OptToolsOn, "tools_on", "")
		return append(out, "prompt="+hx([]byte(m.Prompt)))
	case *Tools:
		var names, descs, schemas []string
		for _, d := range m.Tools {
			names = append(names, hx([]byte(d.Name)))
			descs = append(descs, hx([]byte(d.Description)))
			schemas = append(schemas, hx(d.Schema))
		}
		return []string{"count=" + strconv.Itoa(len(m.Tools)), "names=" + strings.Join(names, ","),
			"descs=" + strings.Join(descs, ","), "schemas=" + strings.Join(schemas, ",")}
	case *ToolCall:
		return []string{"chunk=" + itoa(m.Chunk), "call=" + itoa(m.Call), "tool=" + itoa(m.Tool), "args=" + hx(m.Args)}
	case *ToolResult:
		return []string{"call=" + itoa(m.Call), "status=" + itoa(m.Status), "result=" + hx(m.Result)}
	}
	return nil // CANCEL, STATUS, BYE: no fields
}

// vectorKey is the fixed key of the signing vectors: bytes 0x00..0x1f.
func vectorKey(t testing.TB) Key {
	b := make([]byte, 32)
	for i := range b {
		b[i] = byte(i)
	}
	k, err := NewKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func generateVectors(t *testing.T) []byte {
	w := &vecWriter{t: t}
	w.b.WriteString(`# MCPFrame version 1 test vectors. Format: docs/protocol.md §15.
# Generated by the reference implementation (go test ./serialproto -run TestVectors -update);
# do not edit by hand.
`)
	w.comment("CRC check values (catalogue) and frame-sized inputs")
	for _, v := range []struct {
		name string
		in   []byte
	}{
		{"check", []byte("123456789")},
		{"empty", nil},
		{"zero_byte", []byte{0x00}},
		{"ping_frame_bytes", []byte{0x01, 0x00, 0x04, 0x03, 0x07, 'p', 'i', 'n', 'g'}},
		{"a5_x261", bytes.Repeat([]byte{0xA5}, 261)},
	} {
		w.line("crc", "name=crc8_"+v.name, "alg=crc8", "in="+hx(v.in), fmt.Sprintf("out=%02x", CRC8(v.in)))
		w.line("crc", "name=crc32c_"+v.name, "alg=crc32c", "in="+hx(v.in), fmt.Sprintf("out=%08x", CRC32C(v.in)))
	}

	w.comment("frames: valid datagrams")
	valid := []struct {
		name string
		f    Frame
	}{
		{"ping_spec_example", Frame{Version: 1, Cmd: CmdPing, Seq: 7, Data: []byte("ping")}},
		{"empty_data", Frame{Version: 1, Cmd: CmdStatus, Seq: 0}},
		{"seq_255", Frame{Version: 1, Cmd: CmdBye, Seq: 255}},
		{"max_data_256", Frame{Version: 1, Cmd: CmdToken, Seq: 9, Data: bytes.Repeat([]byte{0x55}, 256)}},
		{"fragment_flag", Frame{Version: 1, Cmd: CmdInfer, Flags: FlagFragment, Seq: 3, Data: []byte{0, 2, 'a', 'b'}}},
		{"signed_flag", Frame{Version: 1, Cmd: CmdAck, Flags: FlagSigned, Seq: 4, Data: make([]byte, 18)}},
		{"unknown_version_2", Frame{Version: 2, Cmd: CmdPing, Seq: 1}},
		{"unknown_command_0x3f", Frame{Version: 1, Cmd: 0x3F, Seq: 1, Data: []byte{1, 2, 3}}},
		{"data_full_of_magic", Frame{Version: 1, Cmd: CmdToken, Seq: 0x55, Data: []byte{0x55, 0x01, 0x00, 0x00, 0x55}}},
	}
	for _, v := range valid {
		w.line("frame", append([]string{"name=" + v.name, "ok=1", "hex=" + hx(mustFrame(t, v.f))}, frameFields(v.f)...)...)
	}
	w.comment("frames: datagrams that must be rejected")
	ping := mustFrame(t, valid[0].f)
	flip := bytes.Clone(ping)
	flip[7] ^= 0x10
	badCRC := bytes.Clone(ping)
	badCRC[len(badCRC)-1] ^= 0xFF
	tooLong := append([]byte{0x55, 1, 0x01, 0x01, byte(CmdToken), 0}, make([]byte, 258)...)
	invalid := []struct {
		name, err string
		b         []byte
	}{
		{"data_bit_flipped", "crc", flip},
		{"crc_byte_wrong", "crc", badCRC},
		{"length_257", "length", tooLong},
		{"length_0xffff", "length", []byte{0x55, 1, 0xFF, 0xFF, 3, 0, 0}},
		{"truncated", "short", ping[:len(ping)-1]},
		{"header_only", "short", ping[:6]},
		{"trailing_byte", "trailing", append(bytes.Clone(ping), 0)},
		{"two_frames_in_one_datagram", "trailing", append(bytes.Clone(ping), ping...)},
		{"bad_magic", "magic", append([]byte{0xAA}, ping[1:]...)},
		{"short_and_bad_magic", "short", []byte{0xAA, 1, 0, 0, 3}},
		{"trailing_and_bad_crc", "trailing", append(bytes.Clone(badCRC), 0)},
		{"length_257_and_trailing", "length", append(bytes.Clone(tooLong), 0)},
	}
	for _, v := range invalid {
		w.line("frame", "name="+v.name, "ok=0", "err="+v.err, "hex="+hx(v.b))
	}

	w.comment("streams: the resync rule of §7.1 (end of input = end of stream)")
	a := mustFrame(t, Frame{Version: 1, Cmd: CmdToken, Seq: 1, Data: []byte("hello")})
	b := mustFrame(t, Frame{Version: 1, Cmd: CmdToken, Seq: 2, Data: []byte("world")})
	c := mustFrame(t, Frame{Version: 1, Cmd: CmdDone, Seq: 3, Data: make([]byte, 27)})
	corrupt := bytes.Clone(a)
	corrupt[8] ^= 0x01
	streams := []struct {
		name string
		in   []byte
	}{
		{"two_clean_frames", cat(a, b)},
		{"garbage_before", cat([]byte{0x00, 0xFF, 0x13, 0x37}, a)},
		{"false_magic_oversize_length", cat([]byte{0x55, 0x01, 0x7F, 0xFF}, a)},
		// The false frame claims 10 data bytes and so swallows the start of
		// the real frame a; a decoder that drops the whole false frame loses a.
		{"real_frame_inside_false_one", cat([]byte{0x55, 0x01, 0x00, 0x0A, 0x06, 0x00}, a, b)},
		{"corrupt_frame_then_good", cat(corrupt, b)},
		{"truncated_at_end", cat(a, b[:len(b)-3])},
		{"magic_run", cat(bytes.Repeat([]byte{0x55}, 9), c)},
		{"frames_only_garbage", []byte{0x55, 0x55, 0x01, 0x00}},
		{"seeded_noise_mix", noiseMix(a, b, c)},
	}
	for _, s := range streams {
		d := NewDecoder(bytes.NewReader(s.in))
		var got []string
		for {
			f, err := d.Next()
			if err == nil {
				got = append(got, hx(mustFrame(t, f)))
				continue
			}
			if _, ok := err.(*ReadError); ok {
				continue
			}
			break
		}
		st := d.Stats()
		w.line("stream", "name="+s.name, "hex="+hx(s.in), "frames="+strings.Join(got, ","),
			"skipped="+strconv.FormatInt(st.Skipped, 10), "badcrc="+strconv.FormatInt(st.BadCRC, 10), "toolong="+strconv.FormatInt(st.TooLong, 10))
	}

	w.comment("messages: bodies of §11 (ok=1: parse gives the fields and the fields encode to the body)")
	w.messages(validMessages(), invalidBodies())

	w.comment("fragmentation (§6): body cut with piece size P")
	for _, v := range []struct {
		name  string
		seq   uint8
		piece int
		body  []byte
	}{
		{"short_prompt_one_fragment", 10, PieceSize(128, false), inferBody(t, "Hi")},
		{"exactly_one_full_fragment", 10, 30, inferBody(t, strings.Repeat("b", 30-4-5))},
		{"one_byte_over_two_fragments", 10, 30, inferBody(t, strings.Repeat("b", 31-4-5))},
		{"three_fragments_max_data_128", 11, PieceSize(128, false), inferBody(t, strings.Repeat("Tell me a story. ", 15))},
		{"small_pieces_32", 12, 30, inferBody(t, "Why is the sky blue? Answer briefly.")},
		{"signed_piece_size", 13, PieceSize(256, true), inferBody(t, strings.Repeat("xyz", 100))},
		{"crc_split_across_last_two", 14, 30, inferBody(t, strings.Repeat("q", 56))},
	} {
		datas, err := Fragments(v.body, v.piece)
		if err != nil {
			t.Fatal(err)
		}
		var frames []string
		for _, d := range datas {
			frames = append(frames, hx(mustFrame(t, Frame{Version: 1, Cmd: CmdInfer, Flags: FlagFragment, Seq: v.seq, Data: d})))
		}
		w.line("frag", "name="+v.name, "cmd=INFER", "seq="+itoa(v.seq), "piece="+strconv.Itoa(v.piece), "body="+hx(v.body), "frames="+strings.Join(frames, ","))
	}

	w.comment("signing (§9): key 000102..1f")
	key := vectorKey(t)
	nonce := MakeNonce(0xA1B2C3D4, 0x01020304)
	for _, v := range []struct {
		name    string
		dir     Direction
		nonce   SessionNonce
		link    uint8
		counter uint64
		f       Frame
	}{
		{"hello_device", DeviceToDaemon, MakeNonce(0xA1B2C3D4, 0), 0, 1, Frame{Version: 1, Cmd: CmdHello, Seq: 0, Data: mustBody(t, exampleHello())}},
		{"ping_device", DeviceToDaemon, nonce, 1, 2, Frame{Version: 1, Cmd: CmdPing, Seq: 1, Data: []byte{1, 2, 3, 4}}},
		{"token_daemon", DaemonToDevice, nonce, 0, 1 << 40, Frame{Version: 1, Cmd: CmdToken, Seq: 2, Data: mustBody(t, &Token{Chunk: 0, Text: []byte("Hi")})}},
	} {
		unsigned := mustFrame(t, v.f)
		s := mustSigner(t, key, v.dir, v.nonce, v.link, v.counter-1)
		signed, err := s.AppendSigned(nil, v.f)
		if err != nil {
			t.Fatal(err)
		}
		w.line("sign", "name="+v.name, "ok=1", "key="+hx(key.b), "dir="+itoa(uint8(v.dir)), "nonce="+hx(v.nonce[:]),
			"link="+itoa(v.link), "counter="+strconv.FormatUint(v.counter, 10), "unsigned="+hx(unsigned), "signed="+hx(signed))
	}
	// Rejections: a tampered tag, a replay, a stale counter, an unsigned frame.
	s := mustSigner(t, key, DeviceToDaemon, nonce, 0, 99)
	good, _ := s.AppendSigned(nil, Frame{Version: 1, Cmd: CmdPing, Seq: 5})
	tampered := bytes.Clone(good)
	tampered[len(tampered)-2] ^= 0x01
	tampered[len(tampered)-1] = CRC8(tampered[1 : len(tampered)-1])
	plain := mustFrame(t, Frame{Version: 1, Cmd: CmdPing, Seq: 5})
	for _, v := range []struct {
		name, err, after string
		frame            []byte
	}{
		{"tampered_tag", "badtag", "", tampered},
		{"replayed_counter", "replay", "100", good},
		{"stale_counter", "stale", "164", good},
		{"not_signed", "unsigned", "", plain},
	} {
		w.line("sign", "name="+v.name, "ok=0", "err="+v.err, "key="+hx(key.b), "dir=0", "nonce="+hx(nonce[:]), "after="+v.after, "signed="+hx(v.frame))
	}
	return w.b.Bytes()
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// noiseMix interleaves frames with seeded random garbage.
func noiseMix(frames ...[]byte) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	var out []byte
	for _, f := range frames {
		junk := make([]byte, 5+r.IntN(20))
		for i := range junk {
			junk[i] = byte(r.IntN(256))
			if r.IntN(4) == 0 {
				junk[i] = Magic
			}
		}
		out = append(append(out, junk...), f...)
	}
	return out
}

func inferBody(t testing.TB, prompt string) []byte {
	return mustBody(t, &Infer{Set: OptionSet(0).With(OptMaxTokens), MaxTokens: 64, Prompt: prompt})
}

func exampleHello() *Hello {
	return &Hello{MinVersion: 1, MaxVersion: 1, MaxData: 128, Window: 2, BootNonce: 0xA1B2C3D4, DeviceID: "esp32-kitchen"}
}

type namedMessage struct {
	name string
	m    Message
}

func validMessages() []namedMessage {
	allOpts := &Infer{Model: "qwen2.5:0.5b", MaxTokens: 128, Temperature: 700, Seed: 42, TopK: 40, TopP: 900, MinP: 50,
		RepeatPenalty: 1100, System: "You are terse.", DeadlineMS: 30000, Context: 4096, Prompt: "Hello, world"}
	for t := OptModel; t < optKnownLimit; t++ {
		allOpts.Set = allOpts.Set.With(t)
	}
	return []namedMessage{
		{"hello", exampleHello()},
		{"hello_signed_max", &Hello{MinVersion: 1, MaxVersion: 3, MaxData: 256, Features: FeatureSign, Window: 255, BootNonce: 0xFFFFFFFF, DeviceID: strings.Repeat("d", 64)}},
		{"hello_sack", &Hello{MinVersion: 1, MaxVersion: 1, MaxData: 256, Features: FeatureSACK, Window: 8, BootNonce: 7, DeviceID: "uart-1"}},
		{"welcome", &Welcome{Version: 1, MaxData: 256, Window: 255, HeartbeatMS: 5000, MaxMessage: DefaultMaxMessage, DaemonNonce: 0x01020304}},
		{"ping_empty", &Ping{}},
		{"ping_8", &Ping{Data: []byte{1, 2, 3, 4, 5, 6, 7, 8}}},
		{"pong", &Pong{Data: []byte{9, 9}}},
		{"infer_prompt_only", &Infer{Prompt: "Hi"}},
		{"infer_greedy_seeded", &Infer{Set: OptionSet(0).With(OptMaxTokens).With(OptTemperature).With(OptSeed), MaxTokens: 16, Temperature: 0, Seed: 42, Prompt: "Hi"}},
		{"infer_all_options", allOpts},
		{"infer_utf8_prompt", &Infer{Set: OptionSet(0).With(OptNewChat), Prompt: "Grüße, 世界 🌍"}},
		// §11.4.1: a registered schema by its one-byte id, and an inline one.
		{"infer_schema_id", &Infer{Set: OptionSet(0).With(OptMaxTokens).With(OptSchema), MaxTokens: 64, SchemaID: 1, Prompt: "Fan?"}},
		{"infer_schema_json", &Infer{Set: OptionSet(0).With(OptSchemaJSON), Prompt: "Fan?",
			SchemaJSON: `{"type":"object","properties":{"fan":{"type":"integer","minimum":0,"maximum":3}}}`}},
		{"token", &Token{Chunk: 0, Text: []byte("Hello")}},
		{"token_multibyte", &Token{Chunk: 65535, Text: []byte("€🌍")}},
		{"done", &Done{Chunk: 3, Reason: StopLength, Tokens: 16, PromptTokens: 9, TTFTMS: 120, DurationMS: 900, TextBytes: 61, TextCRC32C: 0xDEADBEEF}},
		{"error_busy", NewError(CodeBusy, "queue full")},
		{"error_forbidden", NewError(CodeForbidden, "model not allowed")},
		{"error_in_stream", &Error{Code: CodeBackendFailed, Flags: ErrorFlagRetryable | ErrorFlagStream, Chunk: 7, Text: "engine died"}},
		{"cancel", &Cancel{}},
		{"ack", &Ack{Next: 300, Window: 4}},
		// SACK (§8.2): next 5 missing; 6, 8 and 13 held (bits 0, 2, 7).
		{"ack_sack", &Ack{Next: 5, Window: 8, SACK: []byte{0xA1}}},
		// The bitmap's last bit: chunk next+256 of a window of 255 is never
		// sent, but the bitmap can say so.
		{"ack_sack_full", &Ack{Next: 65000, Window: 255, SACK: append(bytes.Repeat([]byte{0xFF}, 31), 0x01)}},
		{"nack_bad_frame", &Nack{Reason: NackBadFrame}},
		{"nack_missing", &Nack{Reason: NackMissing, Missing: []byte{1, 4, 200}}},
		{"status", &Status{}},
		{"status_reply", &StatusReply{State: StateReady, LoadPct: 50, Queue: 2, Backend: "llama.cpp", Model: "tiny-test"}},
		// The extended layout (FeatureStatusExt): marker 0xff, names with
		// their lengths, then the fields.
		{"status_reply_ext", &StatusReply{State: StateReady, LoadPct: 50, Queue: 2, Backend: "llama.cpp", Model: "tiny-test", Extended: true,
			KV: &CacheFigures{Hits: 7, Misses: 3, Evictions: 1, Bytes: 22528}, Responses: &CacheFigures{Hits: 2, Misses: 1, Bytes: 305}}},
		{"status_reply_ext_kv_only", &StatusReply{State: StateDegraded, Backend: "llama.cpp", Model: "m", Extended: true,
			KV: &CacheFigures{Hits: 4294967295, Misses: 0, Evictions: 9, Bytes: 1 << 40}}},
		{"status_reply_ext_no_fields", &StatusReply{State: StateReady, LoadPct: 100, Queue: 255, Backend: "ollama", Extended: true}},
		{"bye", &Bye{}},
	}
}

type badBody struct {
	name, err string
	cmd       Command
	body      []byte
}

func invalidBodies() []badBody {
	return []badBody{
		{"hello_short", "malformed", CmdHello, []byte{1, 1, 0, 128, 0, 0, 2, 0, 0, 0, 1}},
		{"hello_window_0", "malformed", CmdHello, []byte{1, 1, 0, 128, 0, 0, 0, 0, 0, 0, 1, 'x'}},
		{"hello_max_data_16", "malformed", CmdHello, []byte{1, 1, 0, 16, 0, 0, 2, 0, 0, 0, 1, 'x'}},
		{"hello_versions_reversed", "malformed", CmdHello, []byte{2, 1, 0, 128, 0, 0, 2, 0, 0, 0, 1, 'x'}},
		{"hello_device_id_space", "malformed", CmdHello, []byte{1, 1, 0, 128, 0, 0, 2, 0, 0, 0, 1, 'a', ' ', 'b'}},
		{"hello_signed_max_data_32", "malformed", CmdHello, []byte{1, 1, 0, 32, 0, 1, 2, 0, 0, 0, 1, 'x'}},
		{"welcome_short", "malformed", CmdWelcome, []byte{1, 1, 0}},
		{"ping_9_bytes", "malformed", CmdPing, make([]byte, 9)},
		{"infer_no_prompt", "malformed", CmdInfer, []byte{0}},
		{"infer_options_overrun", "malformed", CmdInfer, []byte{5, 2, 2, 0, 'h', 'i'}},
		{"infer_option_wrong_size", "malformed", CmdInfer, []byte{3, 2, 1, 16, 'h', 'i'}},
		{"infer_option_repeated", "malformed", CmdInfer, []byte{8, 2, 2, 0, 16, 2, 2, 0, 16, 'h'}},
		{"infer_critical_unknown_option", "unsupported_option", CmdInfer, []byte{3, 0x80, 1, 0, 'h', 'i'}},
		{"infer_critical_and_malformed", "malformed", CmdInfer, []byte{6, 0x80, 1, 0, 2, 1, 16, 'h', 'i'}},
		{"infer_schema_wrong_size", "malformed", CmdInfer, []byte{4, 0x81, 2, 0, 1, 'h', 'i'}},
		{"infer_schema_json_empty", "malformed", CmdInfer, []byte{2, 0x82, 0, 'h', 'i'}},
		{"infer_schema_json_not_utf8", "malformed", CmdInfer, []byte{3, 0x82, 1, 0xFF, 'h', 'i'}},
		{"infer_critical_0x84_unknown", "unsupported_option", CmdInfer, []byte{3, 0x84, 1, 0, 'h', 'i'}},
		{"infer_model_not_utf8", "malformed", CmdInfer, []byte{3, 1, 1, 0xFF, 'h', 'i'}},
		{"infer_prompt_not_utf8", "malformed", CmdInfer, []byte{0, 0xC3, 0x28}},
		{"token_split_utf8", "malformed", CmdToken, []byte{0, 0, 0xE2, 0x82}},
		{"token_empty_text", "malformed", CmdToken, []byte{0, 0}},
		{"done_short", "malformed", CmdDone, make([]byte, 26)},
		{"error_text_65", "malformed", CmdError, append([]byte{6, 1, 0, 0}, bytes.Repeat([]byte{'x'}, 65)...)},
		{"ack_short", "malformed", CmdAck, []byte{0, 1}},
		{"ack_sack_trailing_zero", "malformed", CmdAck, []byte{0, 1, 2, 0x80, 0}},
		{"ack_sack_33_bytes", "malformed", CmdAck, append([]byte{0, 1, 2}, bytes.Repeat([]byte{1}, 33)...)},
		{"nack_unknown_reason", "malformed", CmdNack, []byte{9}},
		{"nack_missing_unsorted", "malformed", CmdNack, []byte{2, 5, 3}},
		{"nack_missing_empty", "malformed", CmdNack, []byte{2}},
		{"nack_bad_frame_with_indexes", "malformed", CmdNack, []byte{1, 4}},
		{"status_reply_load_101", "malformed", CmdStatusReply, []byte{0, 101, 0, 0}},
		{"status_reply_model_not_utf8", "malformed", CmdStatusReply, []byte{0, 0, 0, 0, 0xC3}},
		{"cancel_with_body", "malformed", CmdCancel, []byte{0}},
		{"status_reply_backend_overrun", "malformed", CmdStatusReply, []byte{0, 0, 0, 9, 'x'}},
		{"status_reply_ext_no_names", "malformed", CmdStatusReply, []byte{0, 0, 0, 0xFF}},
		{"status_reply_ext_model_overrun", "malformed", CmdStatusReply, []byte{0, 0, 0, 0xFF, 1, 'x', 3, 'm'}},
		{"status_reply_ext_field_short", "malformed", CmdStatusReply, append([]byte{0, 0, 0, 0xFF, 0, 0, 1, 19}, make([]byte, 19)...)},
		{"status_reply_ext_field_overrun", "malformed", CmdStatusReply, []byte{0, 0, 0, 0xFF, 0, 0, 0x40, 5, 1}},
		{"status_reply_ext_field_twice", "malformed", CmdStatusReply,
			append(append([]byte{0, 0, 0, 0xFF, 0, 0, 2, 20}, make([]byte, 20)...), append([]byte{2, 20}, make([]byte, 20)...)...)},
		{"status_reply_ext_load_101", "malformed", CmdStatusReply, []byte{0, 101, 0, 0xFF, 0, 0}},
		{"status_reply_ext_model_not_utf8", "malformed", CmdStatusReply, []byte{0, 0, 0, 0xFF, 0, 1, 0xC3}},
	}
}
