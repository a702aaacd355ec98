package main

import (
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	sp "github.com/mcpd-project/mcpd/serialproto"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -run %s -update writes it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("%s differs (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// frameHex encodes m in a frame.
func frameHex(t *testing.T, seq uint8, flags sp.Flags, m sp.Message) string {
	t.Helper()
	body, err := m.AppendBody(nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := sp.AppendFrame(nil, sp.Frame{Version: sp.Version1, Cmd: m.Command(), Flags: flags, Seq: seq, Data: body})
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(raw)
}

// decodeFrames is one of every kind a firmware author meets, with the
// fields a device sets.
func decodeFrames(t *testing.T) []string {
	infer := &sp.Infer{Prompt: "Soil 31 %, air 24.5 °C: water?", Model: "tiny", Temperature: 0, MaxTokens: 64}
	infer.Set = infer.Set.With(sp.OptModel).With(sp.OptTemperature).With(sp.OptMaxTokens).With(sp.OptNewChat)
	inferBody, err := infer.AppendBody(nil)
	if err != nil {
		t.Fatal(err)
	}
	frag, err := sp.AppendFrame(nil, sp.Frame{Version: sp.Version1, Cmd: sp.CmdInfer, Flags: sp.FlagFragment, Seq: 2, Data: append([]byte{0, 1}, inferBody...)})
	if err != nil {
		t.Fatal(err)
	}
	return []string{
		frameHex(t, 1, 0, &sp.Hello{MinVersion: 1, MaxVersion: 1, MaxData: 64, Window: 2, BootNonce: 0x1234, DeviceID: "esp32-kitchen"}),
		frameHex(t, 1, 0, &sp.Welcome{Version: 1, MaxData: 64, Window: 255, HeartbeatMS: 5000, MaxMessage: 4096, DaemonNonce: 7}),
		hex.EncodeToString(frag),
		frameHex(t, 2, 0, &sp.Ack{Next: 1, Window: 2}),
		frameHex(t, 2, 0, &sp.Token{Chunk: 0, Text: []byte("Yes, wat")}),
		frameHex(t, 2, 0, &sp.Token{Chunk: 1, Text: []byte("er 🌱 now.")}),
		frameHex(t, 2, 0, &sp.Done{Chunk: 2, Reason: sp.StopLength, Tokens: 64, PromptTokens: 17, TTFTMS: 48, DurationMS: 612, TextBytes: 19, TextCRC32C: 0xdeadbeef}),
		frameHex(t, 3, 0, sp.NewError(sp.CodeTooLarge, "prompt exceeds the context: 5033 prompt tokens, context 2048")),
		frameHex(t, 4, 0, &sp.Nack{Reason: sp.NackMissing, Missing: []byte{1, 3}}),
		frameHex(t, 5, 0, &sp.Ping{Data: []byte{1, 2, 3}}),
		frameHex(t, 6, 0, &sp.Status{}),
		frameHex(t, 6, 0, &sp.StatusReply{State: sp.StateReady, LoadPct: 50, Backend: "llama.cpp", Model: "tiny", Extended: true,
			KV: &sp.CacheFigures{Hits: 9, Misses: 1, Bytes: 22528}}),
	}
}

// decode's text output is stable and readable: every field by its
// protocol name, text as quoted strings, no Go structs.
func TestDecodeGolden(t *testing.T) {
	frames := decodeFrames(t)
	out, _, err := runCmd(t, "", append([]string{"decode"}, frames...)...)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "{") || strings.Contains(out, "[72") {
		t.Errorf("Go structs in the output:\n%s", out)
	}
	golden(t, "decode.txt", out)

	js, _, err := runCmd(t, "", append([]string{"decode", "-json"}, frames...)...)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "decode.json", js)

	// A captured byte stream with noise between frames.
	stream := "ff00" + frames[4] + "55aa" + frames[5]
	out, _, err = runCmd(t, stream, "decode", "-hex")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "decode-stream.txt", out)
}
