package e2e

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mcpd-project/mcpd/serialproto"
)

// randomStream mixes sound frames with what a noisy UART adds: noise rich
// in 0x55, corrupt and truncated frames, false headers with a length above
// 256.
func randomStream(r *rand.Rand) []byte {
	var b []byte
	for len(b) < 4096 {
		n := r.IntN(24)
		if r.IntN(8) == 0 {
			n = r.IntN(257)
		}
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(r.IntN(256))
			if r.IntN(4) == 0 {
				data[i] = serialproto.Magic
			}
		}
		f, err := serialproto.AppendFrame(nil, serialproto.Frame{Version: uint8(1 + r.IntN(2)), Cmd: serialproto.Command(r.IntN(64)), Flags: serialproto.Flags(r.IntN(4) << 6), Seq: uint8(r.IntN(256)), Data: data})
		if err != nil {
			panic(err)
		}
		switch r.IntN(7) {
		case 0:
			for range r.IntN(12) {
				b = append(b, []byte{serialproto.Magic, byte(r.IntN(256)), serialproto.Magic}[r.IntN(3)])
			}
		case 1:
			f[1+r.IntN(len(f)-1)] ^= 1 << r.IntN(8)
			b = append(b, f...)
		case 2:
			b = append(b, f[:r.IntN(len(f))]...)
		case 3:
			b = append(b, serialproto.Magic, 1, byte(1+r.IntN(255)), byte(r.IntN(256)))
		default:
			b = append(b, f...)
		}
	}
	return b
}

// goDecode is what serialproto makes of the stream, in decode_stream's
// output format.
func goDecode(t *testing.T, stream []byte) string {
	t.Helper()
	d := serialproto.NewDecoder(bytes.NewReader(stream))
	var out strings.Builder
	for {
		f, err := d.Next()
		var re *serialproto.ReadError
		switch {
		case err == nil:
			w, err := serialproto.AppendFrame(nil, f)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintln(&out, hex.EncodeToString(w))
			continue
		case errors.As(err, &re):
			continue
		case errors.Is(err, io.EOF):
		default:
			t.Fatal(err)
		}
		break
	}
	s := d.Stats()
	fmt.Fprintf(&out, "%d %d %d\n", s.Skipped, s.BadCRC, s.TooLong)
	return out.String()
}

// gccTool builds a C test tool from clients/c with the flags the library
// promises to be clean under, plus args (sources, optimisation,
// sanitizers), and returns its path.
func gccTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	cc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatalf("gcc is needed to build %s: %v", name, err)
	}
	bin := filepath.Join(t.TempDir(), name)
	args = append([]string{"-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-I../include", "-o", bin}, args...)
	if out, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	return bin
}

// TestCDecoderMatchesGo feeds the same random streams to the C stream
// decoder and to serialproto's: the frames and the counters must agree.
func TestCDecoderMatchesGo(t *testing.T) {
	bin := gccTool(t, "decode_stream", "-O1", "../tests/decode_stream.c", "../src/mcpf_crc.c", "../src/mcpf_frame.c", "../src/mcpf_decoder.c")
	streams := 200
	if testing.Short() {
		streams = 20
	}
	r := rand.New(rand.NewPCG(10, 1))
	frames := 0
	for i := range streams {
		stream := randomStream(r)
		want := goDecode(t, stream)
		cmd := exec.Command(bin)
		cmd.Stdin = bytes.NewReader(stream)
		got, err := cmd.Output()
		if err != nil {
			t.Fatalf("decode_stream: %v", err)
		}
		if string(got) != want {
			t.Fatalf("stream %d (%d bytes): C and Go disagree\nC:  %q\nGo: %q\nstream %x", i, len(stream), got, want, stream)
		}
		frames += strings.Count(want, "\n") - 1
	}
	t.Logf("%d streams, %d frames: C and Go agree", streams, frames)
}
