package serialproto

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
	"testing/iotest"
	"time"
	"unicode/utf8"
)

// seedFromVectors adds every byte string of one kind of vector to a corpus,
// so the fuzzers start from the same cases as the table tests.
func seedFromVectors(f *testing.F, kind string, field string) {
	file := mustReadVectors(f)
	for _, v := range parseVectorsTB(f, file) {
		if v.kind == kind {
			b := v.hexTB(f, field)
			f.Add(b)
		}
	}
}

// FuzzDecoder: the stream decoder never panics, every frame it emits has a
// valid CRC and re-encodes to exactly the bytes it was read from, every
// byte is accounted for, and how the reader chunks the input changes
// nothing.
func FuzzDecoder(f *testing.F) {
	seedFromVectors(f, "stream", "hex")
	seedFromVectors(f, "frame", "hex")
	f.Fuzz(func(t *testing.T, in []byte) {
		frames, d := decodeAll(t, bytes.NewReader(in))
		for _, fr := range frames {
			if !bytes.Equal(fr.raw, in[fr.offset:fr.offset+int64(len(fr.raw))]) {
				t.Fatalf("frame at %d does not re-encode to its input bytes", fr.offset)
			}
			if CRC8(fr.raw[1:len(fr.raw)-1]) != fr.raw[len(fr.raw)-1] {
				t.Fatal("emitted a frame with a bad CRC")
			}
		}
		checkAccounting(t, d, frames)
		one, _ := decodeAll(t, iotest.OneByteReader(bytes.NewReader(in)))
		if len(one) != len(frames) {
			t.Fatalf("byte-at-a-time read found %d frames, whole read %d", len(one), len(frames))
		}
	})
}

// FuzzDecode: a datagram either decodes and re-encodes to itself, or is
// rejected with one of the codec's errors.
func FuzzDecode(f *testing.F) {
	seedFromVectors(f, "frame", "hex")
	f.Fuzz(func(t *testing.T, in []byte) {
		fr, err := Decode(in)
		if err != nil {
			for _, e := range []error{ErrShortFrame, ErrBadMagic, ErrTooLong, ErrBadCRC, ErrTrailing} {
				if errors.Is(err, e) {
					return
				}
			}
			t.Fatalf("unexpected error class: %v", err)
		}
		out, err := AppendFrame(nil, fr)
		if err != nil || !bytes.Equal(out, in) {
			t.Fatalf("re-encode: %v %x", err, out)
		}
	})
}

// FuzzParseBody: no body crashes a parser; whatever parses re-encodes to a
// body that parses to the same message (and, except INFER whose options may
// come in any order or include skipped hints, to the same bytes).
func FuzzParseBody(f *testing.F) {
	for _, v := range parseVectorsTB(f, mustReadVectors(f)) {
		if v.kind == "msg" {
			cmd, _ := ParseCommand(v.fields["cmd"])
			f.Add(uint8(cmd), v.hexTB(f, "body"))
		}
	}
	f.Fuzz(func(t *testing.T, cmd uint8, body []byte) {
		m, err := ParseBody(Command(cmd), body)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupportedOption) && !errors.Is(err, ErrUnknownCommand) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		out, err := m.AppendBody(nil)
		if err != nil {
			t.Fatalf("%s parsed but does not encode: %v", m.Command(), err)
		}
		// INFER's options and an extended STATUS_REPLY's fields may come
		// in any order or include skipped unknown ones.
		if sr, ok := m.(*StatusReply); m.Command() != CmdInfer && (!ok || !sr.Extended) && !bytes.Equal(out, body) {
			t.Fatalf("%s re-encodes to %x, was %x", m.Command(), out, body)
		}
		m2, err := ParseBody(Command(cmd), out)
		if err != nil {
			t.Fatalf("re-encoded body does not parse: %v", err)
		}
		out2, _ := m2.AppendBody(nil)
		if !bytes.Equal(out, out2) {
			t.Fatal("encoding is not stable")
		}
	})
}

// FuzzReassembler: a body cut into fragments, delivered shuffled, with
// duplicates and with a foreign message's junk fragments interleaved,
// reassembles to exactly the body; junk never crashes the reassembler nor
// grows it beyond its bounds.
func FuzzReassembler(f *testing.F) {
	for _, v := range parseVectorsTB(f, mustReadVectors(f)) {
		if v.kind == "frag" {
			f.Add(v.hexTB(f, "body"), uint8(v.intTB(f, "piece")), uint64(1), []byte{0x00, 0x02, 0x41})
		}
	}
	f.Add(bytes.Repeat([]byte("x"), 3000), uint8(30), uint64(9), []byte{0x05, 0x03, 1, 2, 3, 0xFF, 0x00})
	f.Fuzz(func(t *testing.T, body []byte, piece uint8, seed uint64, junk []byte) {
		r := NewReassembler(ReassemblerConfig{MaxMessage: 65535, MaxPending: 2})
		now := time.Unix(0, 0)
		// Junk: arbitrary fragments of other messages, their seqs taken
		// from the junk (never 7, the real message's).
		for len(junk) > 1 {
			seq := junk[0]
			if seq == 7 {
				seq = 8
			}
			n := min(len(junk)-1, 1+int(junk[1])%40)
			_, _, _ = r.Add(now, CmdInfer, seq, junk[1:1+n])
			junk = junk[1+n:]
			if r.Pending() > 2 {
				t.Fatal("reassembler exceeded MaxPending")
			}
		}
		if piece == 0 || int(piece) > MaxData-FragmentHeaderLen || len(body) == 0 {
			return
		}
		datas, err := Fragments(body, int(piece))
		if err != nil {
			if !errors.Is(err, ErrTooLarge) {
				t.Fatal(err)
			}
			return
		}
		rng := rand.New(rand.NewPCG(seed, 1))
		order := append([]int(nil), rng.Perm(len(datas))...)
		for i := range len(datas) / 3 { // duplicates
			order = append(order, order[i])
		}
		var got []byte
		r.Expire(now.Add(time.Hour)) // make room whatever the junk left behind
		if r.Pending() != 0 {
			t.Fatal("Expire left messages pending")
		}
		for _, i := range order {
			b, _, err := r.Add(now, CmdInfer, 7, datas[i])
			switch {
			case errors.Is(err, ErrDuplicate) && got != nil:
			case err != nil:
				t.Fatalf("fragment %d: %v", i, err)
			case b != nil:
				got = b
			}
		}
		if !bytes.Equal(got, body) {
			t.Fatalf("reassembled %d bytes, want %d", len(got), len(body))
		}
	})
}

// FuzzVerify: no frame crashes the verifier, and a frame is accepted only
// with the tag the key makes.
func FuzzVerify(f *testing.F) {
	seedFromVectors(f, "sign", "signed")
	f.Fuzz(func(t *testing.T, raw []byte) {
		fr, err := Decode(raw)
		if err != nil {
			return
		}
		key := vectorKey(t)
		v := mustVerifier(t, key, DeviceToDaemon, MakeNonce(0xA1B2C3D4, 0x01020304))
		out, link, counter, err := v.Verify(fr)
		if err != nil {
			return
		}
		// Accepted: re-signing the payload with the same parameters must
		// reproduce the frame byte for byte.
		s := mustSigner(t, key, DeviceToDaemon, v.Nonce, link, counter-1)
		re, err := s.AppendSigned(nil, Frame{Version: fr.Version, Cmd: fr.Cmd, Flags: fr.Flags &^ FlagSigned, Seq: fr.Seq, Data: out.Data})
		if err != nil || !bytes.Equal(re, raw) {
			t.Fatalf("accepted a frame the key does not sign: %x", raw)
		}
	})
}

// FuzzTextBuffer: whatever bytes arrive in whatever pieces, every chunk is
// valid UTF-8 within its limit, and valid input comes out unchanged.
func FuzzTextBuffer(f *testing.F) {
	f.Add([]byte("Hello, 世界 🌍"), uint8(5), uint8(3))
	f.Add([]byte{0xE2, 0x82, 0xAC, 0xFF, 0xF0, 0x9F}, uint8(4), uint8(1))
	f.Fuzz(func(t *testing.T, in []byte, max, split uint8) {
		limit := 4 + int(max)%60
		step := 1 + int(split)%16
		var tb TextBuffer
		var out []byte
		for i := 0; i < len(in); i += step {
			_, _ = tb.Write(in[i:min(i+step, len(in))])
			for {
				chunk := tb.Next(nil, limit, false)
				if len(chunk) == 0 {
					break
				}
				if len(chunk) > limit || !utf8.Valid(chunk) {
					t.Fatalf("bad chunk %x (limit %d)", chunk, limit)
				}
				out = append(out, chunk...)
			}
		}
		for tb.Len() > 0 {
			chunk := tb.Next(nil, limit, true)
			if len(chunk) == 0 || len(chunk) > limit || !utf8.Valid(chunk) {
				t.Fatalf("bad final chunk %x", chunk)
			}
			out = append(out, chunk...)
		}
		if utf8.Valid(in) && !bytes.Equal(out, in) {
			t.Fatalf("valid input changed: %q -> %q", in, out)
		}
		if !utf8.Valid(out) {
			t.Fatal("output is not UTF-8")
		}
	})
}
