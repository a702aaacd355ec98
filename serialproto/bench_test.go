package serialproto

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

// BenchmarkCRC8 measures the CRC against the bit-by-bit form of the spec,
// the baseline every firmware author starts from, in the same run.
func BenchmarkCRC8(b *testing.B) {
	p := make([]byte, MaxFrameLen-2)
	b.Run("slicing-by-8", func(b *testing.B) {
		b.SetBytes(int64(len(p)))
		for b.Loop() {
			_ = CRC8(p)
		}
	})
	b.Run("bytewise-table", func(b *testing.B) {
		b.SetBytes(int64(len(p)))
		for b.Loop() {
			_ = crc8Bytewise(p)
		}
	})
	b.Run("bitwise-baseline", func(b *testing.B) {
		b.SetBytes(int64(len(p)))
		for b.Loop() {
			_ = crc8Bitwise(p)
		}
	})
}

var benchSizes = []int{0, 32, 256}

func BenchmarkAppendFrame(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("data=%d", n), func(b *testing.B) {
			f := Frame{Version: 1, Cmd: CmdToken, Seq: 1, Data: make([]byte, n)}
			buf := make([]byte, 0, MaxFrameLen)
			b.SetBytes(int64(f.Len()))
			b.ReportAllocs()
			for b.Loop() {
				buf, _ = AppendFrame(buf[:0], f)
			}
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("data=%d", n), func(b *testing.B) {
			raw := mustFrame(b, Frame{Version: 1, Cmd: CmdToken, Seq: 1, Data: make([]byte, n)})
			b.SetBytes(int64(len(raw)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Decode(raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchStream is 1,000 frames of mixed sizes, optionally with line noise.
func benchStream(b testing.TB, noisy bool) ([]byte, int) {
	var s []byte
	for i := range 1000 {
		if noisy && i%10 == 0 {
			s = append(s, 0x00, 0x55, 0x01, 0xFF, 0x13, 0x55)
		}
		s = append(s, mustFrame(b, Frame{Version: 1, Cmd: CmdToken, Seq: uint8(i), Data: make([]byte, (i*37)%257)})...)
	}
	return s, 1000
}

func BenchmarkDecoderStream(b *testing.B) {
	for _, noisy := range []bool{false, true} {
		b.Run(fmt.Sprintf("noisy=%v", noisy), func(b *testing.B) {
			stream, frames := benchStream(b, noisy)
			r := bytes.NewReader(stream)
			d := NewDecoder(r)
			b.SetBytes(int64(len(stream)))
			b.ReportAllocs()
			for b.Loop() {
				r.Reset(stream)
				*d = Decoder{r: r, buf: d.buf}
				n := 0
				for {
					_, err := d.Next()
					if err == nil {
						n++
						continue
					}
					if _, ok := err.(*ReadError); ok {
						continue
					}
					break
				}
				if n != frames {
					b.Fatalf("decoded %d frames, want %d", n, frames)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*frames), "ns/frame")
		})
	}
}

func BenchmarkSign(b *testing.B) {
	s := mustSigner(b, vectorKey(b), DeviceToDaemon, MakeNonce(1, 2), 0, 0)
	f := Frame{Version: 1, Cmd: CmdToken, Seq: 1, Data: make([]byte, 64)}
	buf := make([]byte, 0, MaxFrameLen)
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = s.AppendSigned(buf[:0], f)
	}
}

func BenchmarkVerify(b *testing.B) {
	key := vectorKey(b)
	raw, _ := mustSigner(b, key, DeviceToDaemon, MakeNonce(1, 2), 0, 0).AppendSigned(nil, Frame{Version: 1, Cmd: CmdToken, Data: make([]byte, 64)})
	f, _ := Decode(raw)
	v := mustVerifier(b, key, DeviceToDaemon, MakeNonce(1, 2))
	w := &ReplayWindow{}
	v.windows[0] = w
	b.ReportAllocs()
	for b.Loop() {
		*w = ReplayWindow{} // accept the same counter each time
		if _, _, _, err := v.Verify(f); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFragmentReassemble4KiB(b *testing.B) {
	body := bytes.Repeat([]byte("prompt "), 4096/7)
	r := NewReassembler(ReassemblerConfig{})
	now := time.Unix(0, 0)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		datas, err := Fragments(body, PieceSize(MaxData, false))
		if err != nil {
			b.Fatal(err)
		}
		var got []byte
		for _, d := range datas {
			got, _, _ = r.Add(now, CmdInfer, uint8(i), d)
		}
		r.Forget(CmdInfer, uint8(i))
		if len(got) != len(body) {
			b.Fatal("reassembly failed")
		}
	}
}

func BenchmarkTextBuffer(b *testing.B) {
	tokens := []string{"Hello", ",", " wor", "ld", " \xe2\x82", "\xac", " 🌍", "!"}
	var tb TextBuffer
	out := make([]byte, 0, MaxData)
	b.ReportAllocs()
	for b.Loop() {
		for _, tok := range tokens {
			_, _ = tb.WriteString(tok)
		}
		out = tb.Next(out[:0], 254, true)
	}
}
