package serialproto

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"testing"
	"testing/iotest"
)

type decoded struct {
	raw    []byte
	offset int64
}

// decodeAll runs a Decoder to the end of r and returns the frames with
// their stream offsets and the decoder.
func decodeAll(t testing.TB, r io.Reader) ([]decoded, *Decoder) {
	d := NewDecoder(r)
	var out []decoded
	for range 1 << 20 { // bounded: every iteration consumes input or ends
		f, err := d.Next()
		if err == nil {
			raw := mustFrame(t, f)
			out = append(out, decoded{raw, d.Offset() - int64(len(raw))})
			continue
		}
		var re *ReadError
		if errors.As(err, &re) || errors.Is(err, ErrIdle) {
			continue
		}
		if !errors.Is(err, io.EOF) {
			t.Fatalf("decoder error: %v", err)
		}
		return out, d
	}
	t.Fatal("decoder did not finish")
	return nil, nil
}

// TestDecoderReadSizesAgree checks that how the reader chunks the stream
// never changes what the decoder finds.
func TestDecoderReadSizesAgree(t *testing.T) {
	a := mustFrame(t, Frame{Version: 1, Cmd: CmdToken, Seq: 1, Data: []byte("hello")})
	b := mustFrame(t, Frame{Version: 1, Cmd: CmdDone, Seq: 2, Data: make([]byte, 27)})
	in := noiseMix(a, b, a, b, bytes.Repeat([]byte{0x55}, 300), a)
	whole, dw := decodeAll(t, bytes.NewReader(in))
	one, do := decodeAll(t, iotest.OneByteReader(bytes.NewReader(in)))
	half, dh := decodeAll(t, iotest.HalfReader(bytes.NewReader(in)))
	if len(whole) != 5 {
		t.Fatalf("found %d frames, want 5", len(whole))
	}
	for _, other := range [][]decoded{one, half} {
		if len(other) != len(whole) {
			t.Fatalf("chunked read found %d frames, whole read %d", len(other), len(whole))
		}
		for i := range whole {
			if !bytes.Equal(other[i].raw, whole[i].raw) || other[i].offset != whole[i].offset {
				t.Fatalf("frame %d differs between read sizes", i)
			}
		}
	}
	if dw.Stats() != do.Stats() || dw.Stats() != dh.Stats() {
		t.Fatalf("stats differ: %+v %+v %+v", dw.Stats(), do.Stats(), dh.Stats())
	}
	checkAccounting(t, dw, whole)
}

// checkAccounting: every byte read is in a frame or was skipped.
func checkAccounting(t testing.TB, d *Decoder, frames []decoded) {
	t.Helper()
	var inFrames int64
	for _, f := range frames {
		inFrames += int64(len(f.raw))
	}
	st := d.Stats()
	if st.Bytes != inFrames+st.Skipped+int64(d.Buffered()) {
		t.Fatalf("accounting: read %d, frames %d, skipped %d, buffered %d", st.Bytes, inFrames, st.Skipped, d.Buffered())
	}
	if st.Frames != int64(len(frames)) {
		t.Fatalf("stats count %d frames, returned %d", st.Frames, len(frames))
	}
}

// TestDecoderRecoversFramesAmidGarbage is the resync property of
// docs/protocol.md §7.1: in a stream of random garbage (rich in 0x55) with
// frames mixed in, every frame is recovered at its exact offset unless a
// spurious frame — garbage that happened to pass the CRC — overlaps it.
func TestDecoderRecoversFramesAmidGarbage(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 7))
		var in []byte
		type span struct{ start, end int64 }
		var real []span
		for range 200 {
			junk := make([]byte, r.IntN(40))
			for i := range junk {
				junk[i] = byte(r.IntN(256))
				if r.IntN(5) == 0 {
					junk[i] = Magic
				}
			}
			in = append(in, junk...)
			data := make([]byte, r.IntN(MaxData+1))
			for i := range data {
				data[i] = byte(r.IntN(256))
			}
			f := mustFrame(t, Frame{Version: 1, Cmd: Command(1 + r.IntN(14)), Seq: uint8(r.IntN(256)), Data: data})
			real = append(real, span{int64(len(in)), int64(len(in) + len(f))})
			in = append(in, f...)
		}
		got, d := decodeAll(t, bytes.NewReader(in))
		checkAccounting(t, d, got)
		isReal := map[int64]bool{}
		for _, s := range real {
			isReal[s.start] = true
		}
		var spurious []span
		found := map[int64]bool{}
		for _, g := range got {
			if isReal[g.offset] && bytes.Equal(g.raw, in[g.offset:g.offset+int64(len(g.raw))]) {
				found[g.offset] = true
			} else {
				spurious = append(spurious, span{g.offset, g.offset + int64(len(g.raw))})
			}
		}
		for _, s := range real {
			if found[s.start] {
				continue
			}
			overlapped := false
			for _, sp := range spurious {
				if sp.start < s.end && s.start < sp.end {
					overlapped = true
				}
			}
			if !overlapped {
				t.Fatalf("seed %d: frame at offset %d lost without a spurious frame over it", seed, s.start)
			}
		}
		if len(spurious) > 10 { // ~1/256 of the candidates that reach a CRC check
			t.Fatalf("seed %d: %d spurious frames from garbage", seed, len(spurious))
		}
	}
}

// idleReader serves scripted reads; an empty chunk is a (0, nil) read, as a
// serial port returns when its read timeout expires.
type idleReader struct{ chunks [][]byte }

func (r *idleReader) Read(p []byte) (int, error) {
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0])
	if n == len(r.chunks[0]) {
		r.chunks = r.chunks[1:]
	} else {
		r.chunks[0] = r.chunks[0][n:]
	}
	return n, nil
}

// TestDecoderIdleAbandonsFalseCandidates: false magics claiming 200 data
// bytes sit in front of a real frame; when the line goes quiet the decoder
// must not wait for 200 more bytes but deliver the real frame now, without
// another read, however many false candidates are nested.
func TestDecoderIdleAbandonsFalseCandidates(t *testing.T) {
	real := mustFrame(t, Frame{Version: 1, Cmd: CmdAck, Seq: 9, Data: []byte{0, 1, 0}})
	ping := mustFrame(t, Frame{Version: 1, Cmd: CmdPing, Seq: 10})
	falseHeader := []byte{0x55, 0x01, 0x00, 0xC8, 0x0A, 0x00}
	for nested := 1; nested <= 3; nested++ {
		var prefix []byte
		for range nested {
			prefix = append(prefix, falseHeader...)
		}
		r := &idleReader{chunks: [][]byte{cat(prefix, real), {}, ping}}
		d := NewDecoder(r)
		f, err := d.Next()
		if err != nil || f.Cmd != CmdAck || f.Seq != 9 {
			t.Fatalf("nested %d: got %v, %v", nested, f, err)
		}
		if len(r.chunks) != 1 {
			t.Fatalf("nested %d: the frame waited for another read", nested)
		}
		if st := d.Stats(); st.Abandoned != int64(nested) || st.Skipped != int64(len(prefix)) {
			t.Fatalf("nested %d: stats %+v", nested, st)
		}
		if _, err := d.Next(); !errors.Is(err, ErrIdle) { // the drain is over
			t.Fatalf("nested %d: want ErrIdle, got %v", nested, err)
		}
		if f, err := d.Next(); err != nil || f.Cmd != CmdPing {
			t.Fatalf("nested %d: after idle: %v %v", nested, f, err)
		}
	}
}

// deadlineReader returns os.ErrDeadlineExceeded between chunks, as a
// net.Conn with a read deadline does.
type deadlineReader struct{ chunks [][]byte }

func (r *deadlineReader) Read(p []byte) (int, error) {
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	c := r.chunks[0]
	r.chunks = r.chunks[1:]
	if c == nil {
		return 0, os.ErrDeadlineExceeded
	}
	return copy(p, c), nil
}

func TestDecoderSurvivesReadDeadlines(t *testing.T) {
	a := mustFrame(t, Frame{Version: 1, Cmd: CmdPing, Seq: 1})
	d := NewDecoder(&deadlineReader{chunks: [][]byte{a[:3], nil, a[3:], a, nil, a}})
	var frames, idles int
	for range 20 {
		_, err := d.Next()
		switch {
		case err == nil:
			frames++
		case errors.Is(err, ErrIdle):
			idles++
		case errors.Is(err, io.EOF):
			if idles != 2 {
				t.Fatalf("%d idles, want 2", idles)
			}
			// The first frame was cut by the deadline and abandoned; the
			// decoder carried on rather than failing for good.
			if frames != 2 {
				t.Fatalf("%d frames, want 2", frames)
			}
			return
		default:
			t.Fatalf("a read deadline was fatal: %v", err)
		}
	}
	t.Fatal("no EOF")
}

// TestDecoderReaderError: an unplugged port's error comes out once the
// buffered frames are delivered, and stays.
func TestDecoderReaderError(t *testing.T) {
	unplugged := errors.New("port closed")
	a := mustFrame(t, Frame{Version: 1, Cmd: CmdPing, Seq: 1})
	d := NewDecoder(io.MultiReader(bytes.NewReader(cat(a, a[:4])), iotest.ErrReader(unplugged)))
	if _, err := d.Next(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := d.Next(); !errors.Is(err, unplugged) {
			t.Fatalf("want the reader's error, got %v", err)
		}
	}
}

func TestReadErrorIsNonFatalAndTyped(t *testing.T) {
	bad := mustFrame(t, Frame{Version: 1, Cmd: CmdPing, Seq: 1, Data: []byte("x")})
	bad[6] ^= 0xFF
	good := mustFrame(t, Frame{Version: 1, Cmd: CmdPing, Seq: 2})
	d := NewDecoder(bytes.NewReader(cat([]byte{1, 2, 3}, bad, good)))
	_, err := d.Next()
	var re *ReadError
	if !errors.As(err, &re) || !errors.Is(err, ErrBadCRC) || re.Offset != 3 {
		t.Fatalf("want ReadError{ErrBadCRC} at offset 3, got %v", err)
	}
	if f, err := d.Next(); err != nil || f.Seq != 2 {
		t.Fatalf("after a ReadError: %v, %v", f, err)
	}
}

// TestDecoderRejectsWithoutAllocating: a noisy line makes the decoder
// reject candidates by the hundred (false magics, bad CRCs, lengths above
// 256); none of them, nor the end of the input, may cost an allocation.
func TestDecoderRejectsWithoutAllocating(t *testing.T) {
	stream, frames := benchStream(t, true)
	r := bytes.NewReader(stream)
	d := NewDecoder(r)
	var decoded, rejected int
	allocs := testing.AllocsPerRun(10, func() {
		r.Reset(stream)
		*d = Decoder{r: r, buf: d.buf}
		decoded, rejected = 0, 0
		for {
			_, err := d.Next()
			if err == nil {
				decoded++
				continue
			}
			if _, ok := err.(*ReadError); !ok { // errors.As would allocate its target here
				break
			}
			rejected++
		}
	})
	if decoded != frames || rejected == 0 {
		t.Fatalf("decoded %d frames (want %d), rejected %d candidates: the test proves nothing", decoded, frames, rejected)
	}
	if allocs != 0 {
		t.Fatalf("%v allocations decoding a stream with %d rejected candidates, want 0", allocs, rejected)
	}
}
