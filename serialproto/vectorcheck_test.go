package serialproto

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// vector is one parsed line of testdata/vectors.txt.
type vector struct {
	kind   string
	fields map[string]string
	order  []string
}

func mustReadVectors(t testing.TB) []byte {
	b, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func parseVectors(t *testing.T, file []byte) []vector { return parseVectorsTB(t, file) }

func (v vector) hexTB(t testing.TB, k string) []byte {
	b, err := hex.DecodeString(v.fields[k])
	if err != nil {
		t.Fatalf("%s: field %s: %v", v.fields["name"], k, err)
	}
	return b
}

func (v vector) intTB(t testing.TB, k string) int {
	n, err := strconv.Atoi(v.fields[k])
	if err != nil {
		t.Fatalf("%s: field %s: %v", v.fields["name"], k, err)
	}
	return n
}

func parseVectorsTB(t testing.TB, file []byte) []vector {
	var out []vector
	sc := bufio.NewScanner(bytes.NewReader(file))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		words := strings.Fields(line)
		v := vector{kind: words[0], fields: map[string]string{}}
		for _, w := range words[1:] {
			k, val, ok := strings.Cut(w, "=")
			if !ok {
				t.Fatalf("vector line %q: field %q has no '='", line, w)
			}
			v.fields[k] = val
			v.order = append(v.order, k)
		}
		out = append(out, v)
	}
	return out
}

func (v vector) hex(t *testing.T, k string) []byte { return v.hexTB(t, k) }

func (v vector) hexList(t *testing.T, k string) [][]byte {
	var out [][]byte
	if v.fields[k] == "" {
		return nil
	}
	for _, s := range strings.Split(v.fields[k], ",") {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatalf("%s: %v", v.fields["name"], err)
		}
		out = append(out, b)
	}
	return out
}

func (v vector) int(t *testing.T, k string) int { return v.intTB(t, k) }

// frameErrClass maps decoding errors to the vector file's error classes.
func frameErrClass(err error) string {
	switch {
	case errors.Is(err, ErrBadCRC):
		return "crc"
	case errors.Is(err, ErrTooLong):
		return "length"
	case errors.Is(err, ErrShortFrame):
		return "short"
	case errors.Is(err, ErrTrailing):
		return "trailing"
	case errors.Is(err, ErrBadMagic):
		return "magic"
	case errors.Is(err, ErrUnsupportedOption):
		return "unsupported_option"
	case errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.Is(err, ErrTooLarge):
		return "too_large"
	case errors.Is(err, ErrBadTag):
		return "badtag"
	case errors.Is(err, ErrReplay):
		return "replay"
	case errors.Is(err, ErrStale):
		return "stale"
	case errors.Is(err, ErrUnsigned):
		return "unsigned"
	}
	return "other: " + err.Error()
}

// checkVectorFile checks every vector of the file against the code by
// decoding its inputs, independently of how the file was generated.
func checkVectorFile(t *testing.T, file []byte) {
	kinds := checkVectors(t, file)
	for _, k := range []string{"crc", "frame", "stream", "msg", "frag", "sign"} {
		if kinds[k] == 0 {
			t.Errorf("no %s vectors in the file", k)
		}
	}
}

// checkVectors checks every vector of a file and counts them by kind.
func checkVectors(t *testing.T, file []byte) map[string]int {
	kinds := map[string]int{}
	for _, v := range parseVectors(t, file) {
		name := v.fields["name"]
		kinds[v.kind]++
		switch v.kind {
		case "crc":
			in := v.hex(t, "in")
			var got string
			if v.fields["alg"] == "crc8" {
				got = hex.EncodeToString([]byte{CRC8(in)})
			} else {
				got = strconv.FormatUint(uint64(CRC32C(in))|1<<32, 16)[1:]
			}
			if got != v.fields["out"] {
				t.Errorf("crc %s: got %s want %s", name, got, v.fields["out"])
			}
		case "frame":
			raw := v.hex(t, "hex")
			f, err := Decode(raw)
			if v.fields["ok"] == "0" {
				if err == nil || frameErrClass(err) != v.fields["err"] {
					t.Errorf("frame %s: err %v, want class %s", name, err, v.fields["err"])
				}
				continue
			}
			if err != nil {
				t.Errorf("frame %s: %v", name, err)
				continue
			}
			if got := strings.Join(frameFields(f), " "); got != strings.Join(v.pick("ver", "cmd", "flags", "seq", "data"), " ") {
				t.Errorf("frame %s: decoded %s", name, got)
			}
			if re := mustFrame(t, f); !bytes.Equal(re, raw) {
				t.Errorf("frame %s: re-encodes to %x", name, re)
			}
		case "stream":
			d := NewDecoder(bytes.NewReader(v.hex(t, "hex")))
			var got [][]byte
			for {
				f, err := d.Next()
				if err == nil {
					got = append(got, mustFrame(t, f))
					continue
				}
				var re *ReadError
				if !errors.As(err, &re) {
					break
				}
			}
			st := d.Stats()
			if !slices.EqualFunc(got, v.hexList(t, "frames"), bytes.Equal) ||
				st.Skipped != int64(v.int(t, "skipped")) || st.BadCRC != int64(v.int(t, "badcrc")) || st.TooLong != int64(v.int(t, "toolong")) {
				t.Errorf("stream %s: got %d frames, stats %+v", name, len(got), st)
			}
		case "msg":
			cmd, ok := ParseCommand(v.fields["cmd"])
			if !ok {
				t.Fatalf("msg %s: unknown command %s", name, v.fields["cmd"])
			}
			body := v.hex(t, "body")
			m, err := ParseBody(cmd, body)
			if v.fields["ok"] == "0" {
				if err == nil || frameErrClass(err) != v.fields["err"] {
					t.Errorf("msg %s: err %v, want %s", name, err, v.fields["err"])
				}
				continue
			}
			if err != nil {
				t.Errorf("msg %s: %v", name, err)
				continue
			}
			var want []string
			for _, k := range v.order {
				if !slices.Contains([]string{"name", "cmd", "ok", "body"}, k) {
					want = append(want, k+"="+v.fields[k])
				}
			}
			if got := messageFields(m); !slices.Equal(got, want) {
				t.Errorf("msg %s: fields %v, want %v", name, got, want)
			}
			if re := mustBody(t, m); !bytes.Equal(re, body) {
				t.Errorf("msg %s: re-encodes to %x", name, re)
			}
		case "frag":
			frames := v.hexList(t, "frames")
			r := NewReassembler(ReassemblerConfig{MaxMessage: 65535})
			var body []byte
			for i, raw := range frames {
				f, err := Decode(raw)
				if err != nil {
					t.Fatalf("frag %s: frame %d: %v", name, i, err)
				}
				if f.Flags&FlagFragment == 0 {
					t.Fatalf("frag %s: frame %d lacks the FRAGMENT flag", name, i)
				}
				b, _, err := r.Add(time.Unix(0, 0), f.Cmd, f.Seq, f.Data)
				if err != nil {
					t.Fatalf("frag %s: frame %d: %v", name, i, err)
				}
				if b != nil {
					body = b
				}
			}
			if !bytes.Equal(body, v.hex(t, "body")) {
				t.Errorf("frag %s: reassembled %x", name, body)
			}
		case "sign":
			key, err := NewKey(v.hex(t, "key"))
			if err != nil {
				t.Fatal(err)
			}
			var nonce SessionNonce
			copy(nonce[:], v.hex(t, "nonce"))
			ver := mustVerifier(t, key, Direction(v.int(t, "dir")), nonce)
			signed := v.hex(t, "signed")
			if after := v.fields["after"]; after != "" {
				w := new(ReplayWindow)
				for _, c := range strings.Split(after, ",") {
					n, err := strconv.ParseUint(c, 10, 64)
					if err != nil {
						t.Fatalf("sign %s: after: %v", name, err)
					}
					_ = w.Accept(n)
				}
				// The window of the signed frame's link id (§15).
				ver.windows[signed[len(signed)-1-SignatureLen]] = w
			}
			f, err := Decode(signed)
			if err != nil {
				t.Fatalf("sign %s: %v", name, err)
			}
			_, _, _, err = ver.Verify(f)
			if v.fields["ok"] == "0" {
				if err == nil || frameErrClass(err) != v.fields["err"] {
					t.Errorf("sign %s: err %v, want %s", name, err, v.fields["err"])
				}
			} else if err != nil {
				t.Errorf("sign %s: %v", name, err)
			}
		default:
			t.Errorf("unknown vector kind %q", v.kind)
		}
	}
	return kinds
}

func (v vector) pick(keys ...string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k + "=" + v.fields[k]
	}
	return out
}

// generatedFile rewrites path with got under -update, fails if the file
// differs from got (naming the first line that does), and returns it.
func generatedFile(t *testing.T, path string, got []byte, test string) []byte {
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update)", err, test)
	}
	if !bytes.Equal(got, want) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		for i := range max(len(gl), len(wl)) {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Fatalf("%s line %d differs from the code (go test -run %s -update):\n file: %s\n code: %s", path, i+1, test, w, g)
			}
		}
	}
	return want
}
