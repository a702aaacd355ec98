package e2e

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strings"
	"testing"

	"github.com/mcpd-project/mcpd/serialproto"
)

// randomTools builds a TOOLS body from random declarations that are
// mostly valid: now and then a name with a capital or too long, a
// repeated name, a description with a newline or invalid UTF-8, a schema
// of 1025 bytes. Encoded by hand so invalid ones can be made too.
func randomTools(r *rand.Rand) []byte {
	pick := func(alphabet string, n int) string { // n characters of alphabet
		runes := []rune(alphabet)
		var b strings.Builder
		for range n {
			b.WriteRune(runes[r.IntN(len(runes))])
		}
		return b.String()
	}
	n := 1 + r.IntN(5)
	if r.IntN(20) == 0 {
		n = 1 + r.IntN(18)
	}
	out := []byte{byte(n)}
	var names []string
	for range n {
		name := pick("abcdefghijklmnopqrstuvwxyz0123456789_-", 1+r.IntN(12))
		switch r.IntN(30) {
		case 0:
			name = pick("abcXYZ", 1+r.IntN(4))
		case 1:
			name = pick("ab", 33)
		case 2:
			if len(names) > 0 {
				name = names[0]
			}
		case 3:
			name = ""
		}
		names = append(names, name)
		desc := pick("Reads the sensor; é°C ", r.IntN(40))
		if len(desc) > 160 {
			desc = desc[:r.IntN(161)] // may cut a character: invalid UTF-8 too
		}
		switch r.IntN(30) {
		case 0:
			desc += "\n"
		case 1:
			desc += "\xff"
		case 2:
			desc = pick("d", 161)
		}
		full := `{"type":"object","properties":{"on":{"type":"boolean"}}}`
		schema := full[:r.IntN(len(full)+1)]
		switch r.IntN(30) {
		case 0:
			schema = strings.Repeat(" ", 1025)
		case 1:
			schema += "\xc3"
		}
		out = append(append(out, byte(len(name))), name...)
		out = append(append(out, byte(len(desc))), desc...)
		out = append(append(out, byte(len(schema)>>8), byte(len(schema))), schema...)
	}
	return out
}

// mutate flips, drops, inserts or cuts bytes of a body.
func mutate(r *rand.Rand, b []byte) []byte {
	b = bytes.Clone(b)
	for range r.IntN(3) {
		switch k := r.IntN(4); {
		case k == 0 && len(b) > 0:
			b[r.IntN(len(b))] ^= 1 << r.IntN(8)
		case k == 1 && len(b) > 0:
			i := r.IntN(len(b))
			b = append(b[:i], b[i+1:]...)
		case k == 2:
			i := r.IntN(len(b) + 1)
			b = append(b[:i], append([]byte{byte(r.IntN(256))}, b[i:]...)...)
		case len(b) > 0:
			b = b[:r.IntN(len(b))]
		}
	}
	return b
}

func goClass(cmd serialproto.Command, body []byte) string {
	_, err := serialproto.ParseBody(cmd, body)
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, serialproto.ErrTooLarge):
		return "too_large"
	case errors.Is(err, serialproto.ErrMalformed):
		return "malformed"
	}
	return "other: " + err.Error()
}

// TestCToolParsersMatchGo: the C parsers of TOOLS, TOOL_CALL and
// TOOL_RESULT (tests/parse_tools.c) and serialproto's accept and refuse
// the same random and mutated bodies, with the same error class — a
// differential fuzz of the §16 decode paths.
func TestCToolParsersMatchGo(t *testing.T) {
	bin := gccTool(t, "parse_tools", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
		"../tests/parse_tools.c", "../src/mcpf_tools.c", "../src/mcpf_msg.c", "../src/mcpf_crc.c")
	n := 6000
	if testing.Short() {
		n = 600
	}
	r := rand.New(rand.NewPCG(19, 2))
	type body struct {
		cmd serialproto.Command
		b   []byte
	}
	var bodies []body
	for len(bodies) < n {
		var b body
		switch r.IntN(3) {
		case 0:
			b = body{serialproto.CmdTools, randomTools(r)}
		case 1:
			args := []byte(`{"on":true,"pin":4}`)[:r.IntN(20)]
			b = body{serialproto.CmdToolCall, append([]byte{byte(r.IntN(256)), byte(r.IntN(256)), byte(r.IntN(8)), byte(r.IntN(20))}, args...)}
		default:
			res := bytes.Repeat([]byte("41 °C "), r.IntN(200))
			b = body{serialproto.CmdToolResult, append([]byte{byte(r.IntN(4)), byte(r.IntN(3))}, res...)}
		}
		if r.IntN(2) == 0 {
			b.b = mutate(r, b.b)
		}
		bodies = append(bodies, b)
	}
	var in bytes.Buffer
	for _, b := range bodies {
		fmt.Fprintf(&in, "%d %s\n", b.cmd, hex.EncodeToString(b.b))
	}
	cmd := exec.Command(bin)
	cmd.Stdin = &in
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("parse_tools: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	classes := map[string]int{}
	for i, b := range bodies {
		if !sc.Scan() {
			t.Fatalf("parse_tools answered %d of %d bodies", i, len(bodies))
		}
		want := goClass(b.cmd, b.b)
		if got := sc.Text(); got != want {
			t.Fatalf("%v body %x: C says %s, Go %s", b.cmd, b.b, got, want)
		}
		classes[b.cmd.String()+" "+want]++
	}
	for _, k := range []string{"TOOLS ok", "TOOLS malformed", "TOOL_CALL ok", "TOOL_CALL malformed",
		"TOOL_RESULT ok", "TOOL_RESULT malformed", "TOOL_RESULT too_large"} {
		if classes[k] == 0 {
			t.Errorf("no %s body among %d: the generator misses a case", k, n)
		}
	}
	t.Logf("%d bodies, C and Go agree: %v", n, classes)
}
