package serialproto

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
)

const (
	specPath       = "../docs/protocol.md"
	examplesBegin  = "<!-- examples:begin -->\n"
	examplesEnd    = "<!-- examples:end -->"
	exampleWrapCol = 16 // bytes per hex line
)

// specExchange builds the session of docs/protocol.md §14 with the real
// encoders.
func specExchange(t testing.TB) string {
	var b strings.Builder
	add := func(dir, what string, seq uint8, m Message) {
		f := Frame{Version: Version1, Cmd: m.Command(), Seq: seq, Data: mustBody(t, m)}
		if m.Command() == CmdInfer { // a message of one fragment (§6)
			datas, err := Fragments(f.Data, PieceSize(MaxData, false))
			if err != nil || len(datas) != 1 {
				t.Fatalf("INFER example: %v", err)
			}
			f.Flags, f.Data = FlagFragment, datas[0]
		}
		raw := mustFrame(t, f)
		fmt.Fprintf(&b, "%s %-12s seq=%d  %s\n", dir, f.Cmd, seq, what)
		for i := 0; i < len(raw); i += exampleWrapCol {
			fmt.Fprintf(&b, "    % x\n", raw[i:min(i+exampleWrapCol, len(raw))])
		}
	}
	text := "Hello there!"
	add("D→M", "device esp32-kitchen, versions 1..1, max_data 128, window 2, boot nonce a1b2c3d4", 0, exampleHello())
	add("M→D", "version 1, max_data 256, heartbeat 5000 ms, max_message 16384, daemon nonce 01020304", 0,
		&Welcome{Version: 1, MaxData: 256, Window: 255, HeartbeatMS: 5000, MaxMessage: DefaultMaxMessage, DaemonNonce: 0x01020304})
	add("D→M", `FRAGMENT flag, fragment 0 of 1: MAX_TOKENS 16, TEMPERATURE 0 (greedy), SEED 42, prompt "Hi", CRC-32C`, 1,
		&Infer{Set: OptionSet(0).With(OptMaxTokens).With(OptTemperature).With(OptSeed), MaxTokens: 16, Seed: 42, Prompt: "Hi"})
	add("M→D", "accepted: 1 fragment received", 1, &Ack{Next: 1, Window: 0})
	add("M→D", `chunk 0 "Hello"`, 1, &Token{Chunk: 0, Text: []byte("Hello")})
	add("M→D", `chunk 1 " there!" (window 2 is now full)`, 1, &Token{Chunk: 1, Text: []byte(" there!")})
	add("D→M", "chunks 0 and 1 consumed: next 2, window 2", 1, &Ack{Next: 2, Window: 2})
	add("M→D", fmt.Sprintf("chunk 2: STOP, 3 tokens, 12 bytes, CRC-32C %08x", CRC32C([]byte(text))), 1,
		&Done{Chunk: 2, Reason: StopEOS, Tokens: 3, PromptTokens: 5, TTFTMS: 42, DurationMS: 97, TextBytes: uint32(len(text)), TextCRC32C: CRC32C([]byte(text))})
	add("D→M", "final chunk received: next 3", 1, &Ack{Next: 3, Window: 2})
	return b.String()
}

// TestSpecExamples keeps the byte-level exchange in docs/protocol.md §14
// equal to what the code produces (-update rewrites it).
func TestSpecExamples(t *testing.T) {
	doc, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(doc, []byte(examplesBegin))
	j := bytes.Index(doc, []byte(examplesEnd))
	if i < 0 || j < i {
		t.Fatalf("%s: example markers missing", specPath)
	}
	want := "```\n" + specExchange(t) + "```\n"
	got := string(doc[i+len(examplesBegin) : j])
	if *update {
		doc = append(append(append([]byte{}, doc[:i+len(examplesBegin)]...), want...), doc[j:]...)
		if err := os.WriteFile(specPath, doc, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if got != want {
		t.Fatalf("docs/protocol.md §14 differs from the code; run go test ./serialproto -run TestSpecExamples -update\n got:\n%s\nwant:\n%s", got, want)
	}
}
