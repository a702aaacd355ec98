package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	sp "github.com/mcpd-project/mcpd/serialproto"
)

// runDecode explains frames for firmware authors: hex arguments are decoded
// as datagrams; with no arguments, standard input is decoded as a byte
// stream (a serial capture) with the resync rule.
func runDecode(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("decode", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: mcpctl decode [-hex] [-json] [FRAME-HEX ...]\n\nDecodes MCPFrames and their bodies. Each argument is one frame in hex\n(spaces and colons ignored), checked as a UDP datagram. Without arguments,\nstandard input is decoded as a serial byte stream (raw bytes, or hex text\nwith -hex), skipping garbage as a receiver does.\n\nFlags:")
		fs.PrintDefaults()
	}
	hexIn := fs.Bool("hex", false, "standard input is hex text, not raw bytes")
	asJSON := fs.Bool("json", false, "one JSON object per frame (and a final summary object)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	emit := func(r frameReport) {
		if *asJSON {
			_ = enc.Encode(r)
			return
		}
		fmt.Fprintln(stdout, r.text())
	}
	if fs.NArg() > 0 {
		bad := 0
		for _, a := range fs.Args() {
			raw, err := parseHex(a)
			if err == nil {
				var f sp.Frame
				if f, err = sp.Decode(raw); err == nil {
					emit(report(f, nil))
					continue
				}
			}
			bad++
			if *asJSON {
				_ = enc.Encode(map[string]string{"input": a, "rejected": err.Error()})
			} else {
				fmt.Fprintf(stdout, "%s: rejected: %v\n", a, err)
			}
		}
		if bad > 0 {
			return fmt.Errorf("%d of %d frames rejected", bad, fs.NArg())
		}
		return nil
	}
	in := stdin
	if *hexIn {
		text, err := io.ReadAll(stdin)
		if err != nil {
			return err
		}
		raw, err := parseHex(string(text))
		if err != nil {
			return err
		}
		in = bytes.NewReader(raw)
	}
	d := sp.NewDecoder(in)
	for {
		f, err := d.Next()
		var rerr *sp.ReadError
		switch {
		case err == nil:
			off := d.Offset() - int64(f.Len())
			emit(report(f, &off))
		case errors.As(err, &rerr):
			if *asJSON {
				_ = enc.Encode(map[string]any{"offset": rerr.Offset, "rejected": rerr.Err.Error()})
			} else {
				fmt.Fprintf(stdout, "@%d rejected: %v\n", rerr.Offset, rerr.Err)
			}
		case errors.Is(err, sp.ErrIdle):
		case errors.Is(err, io.EOF):
			st := d.Stats()
			if *asJSON {
				return enc.Encode(map[string]any{"summary": map[string]int64{"bytes": st.Bytes, "frames": st.Frames,
					"skipped": st.Skipped, "bad_crc": st.BadCRC, "bad_length": st.TooLong}})
			}
			fmt.Fprintf(stdout, "%d bytes: %s, %d bytes skipped, %d bad CRC, %d bad length\n",
				st.Bytes, plural(int(st.Frames), "frame", "frames"), st.Skipped, st.BadCRC, st.TooLong)
			return nil
		default:
			return err
		}
	}
}

func parseHex(s string) ([]byte, error) {
	s = strings.NewReplacer(" ", "", ":", "", "\n", "", "\t", "", "\r", "").Replace(s)
	s = strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	return hex.DecodeString(s)
}

// frameReport is one decoded frame as decode prints it: the header, the
// body's fields (in the protocol's order) and a note on what a receiver
// does with it. --json prints it as one JSON object a line.
type frameReport struct {
	Offset  *int64  `json:"offset,omitempty"` // in a byte stream
	Version uint8   `json:"version"`
	Cmd     string  `json:"cmd"`
	Flags   string  `json:"flags"`
	Seq     uint8   `json:"seq"`
	Len     int     `json:"len"`
	Body    []field `json:"-"`
	Note    string  `json:"note,omitempty"`
	Error   string  `json:"error,omitempty"` // the body does not parse
}

// name is a value printed bare, not quoted: an error code, a stop reason.
type name string

// field is one body field: its snake_case name and its value as text, a
// number or a string.
type field struct {
	Name  string
	Value any
}

func (r frameReport) MarshalJSON() ([]byte, error) {
	type plain frameReport
	body := make(map[string]any, len(r.Body))
	for _, f := range r.Body {
		body[f.Name] = f.Value
	}
	out := struct {
		plain
		Body map[string]any `json:"body,omitempty"`
	}{plain(r), body}
	if len(body) == 0 {
		out.Body = nil
	}
	return json.Marshal(out)
}

// text is the report on one line: "v1 TOKEN[-] seq=3 len=7  chunk=0 text="Hi"".
func (r frameReport) text() string {
	var b strings.Builder
	if r.Offset != nil {
		fmt.Fprintf(&b, "@%d ", *r.Offset)
	}
	fmt.Fprintf(&b, "v%d %s[%s] seq=%d len=%d", r.Version, r.Cmd, r.Flags, r.Seq, r.Len)
	for i, f := range r.Body {
		sep := " "
		if i == 0 {
			sep = "  "
		}
		switch v := f.Value.(type) {
		case name:
			fmt.Fprintf(&b, "%s%s=%s", sep, f.Name, v)
		case string:
			fmt.Fprintf(&b, "%s%s=%s", sep, f.Name, strconv.Quote(v))
		default:
			fmt.Fprintf(&b, "%s%s=%v", sep, f.Name, v)
		}
	}
	if r.Note != "" {
		fmt.Fprintf(&b, "  (%s)", r.Note)
	}
	if r.Error != "" {
		fmt.Fprintf(&b, "  body: %s", r.Error)
	}
	return b.String()
}

// report decodes f's body when the command is known and the frame is not
// a fragment or signed.
func report(f sp.Frame, offset *int64) frameReport {
	r := frameReport{Offset: offset, Version: f.Version, Cmd: f.Cmd.String(), Flags: f.Flags.String(), Seq: f.Seq, Len: len(f.Data)}
	switch {
	case f.Version != sp.Version1:
		r.Note = fmt.Sprintf("version %d: a v1 receiver answers ERROR UNSUPPORTED_VERSION", f.Version)
	case f.Flags&sp.FlagSigned != 0:
		r.Note = "signed: the body needs the key to verify"
	case f.Flags&sp.FlagFragment != 0 && len(f.Data) >= 2 && f.Data[0] == 0 && f.Data[1] == 1 && f.Cmd.Known():
		// A whole message in one fragment (a short INFER): its body.
		r.Note = "fragment 0 of 1: the whole message"
		m, err := sp.ParseBody(f.Cmd, f.Data[2:])
		if err != nil {
			r.Error = err.Error()
			break
		}
		r.Body = fields(m)
	case f.Flags&sp.FlagFragment != 0 && len(f.Data) >= 2:
		r.Note = fmt.Sprintf("fragment %d of %d, %d bytes", f.Data[0], f.Data[1], len(f.Data)-2)
	case !f.Cmd.Known():
		r.Note = "unknown command: answered with ERROR UNKNOWN_COMMAND"
	default:
		m, err := sp.ParseBody(f.Cmd, f.Data)
		if err != nil {
			r.Error = err.Error()
			break
		}
		r.Body = fields(m)
	}
	return r
}

// fields lists a message's fields in declaration order (the wire's), with
// zero values left out — an INFER shows the options it carries. Text-like
// byte fields print as strings, other bytes as hex; named numbers with a
// String method (error codes) by name.
func fields(m sp.Message) []field {
	v := reflect.Indirect(reflect.ValueOf(m))
	if v.Kind() != reflect.Struct {
		return nil
	}
	infer, _ := m.(*sp.Infer)
	var out []field
	for i := range v.NumField() {
		sf, fv := v.Type().Field(i), v.Field(i)
		if !sf.IsExported() || sf.Name == "Set" {
			continue
		}
		// An INFER's option is shown when it is present, even at zero
		// (temperature 0 is greedy); other zero fields are left out but a
		// chunk number, where 0 is as telling as any.
		if opt, ok := inferOptions[sf.Name]; infer != nil && ok {
			if !infer.Set.Has(opt) {
				continue
			}
		} else if fv.IsZero() && sf.Name != "Chunk" && sf.Name != "Call" && sf.Name != "Tool" && sf.Name != "Status" {
			continue
		}
		fname := snake(sf.Name)
		switch {
		case sf.Name == "Reason" && fv.Kind() == reflect.Uint8 && (m.Command() == sp.CmdDone):
			out = append(out, field{fname, name(stopWord(uint8(fv.Uint())))})
		case sf.Name == "Missing":
			idx := make([]int, fv.Len())
			for j := range idx {
				idx[j] = int(fv.Index(j).Uint())
			}
			out = append(out, field{fname, name(strings.Trim(strings.ReplaceAll(fmt.Sprint(idx), " ", ","), "[]"))})
		case fv.Kind() == reflect.Slice && fv.Type().Elem().Kind() == reflect.Uint8:
			b := fv.Bytes()
			if (sf.Name == "Text" || sf.Name == "Prompt" || sf.Name == "Args" || sf.Name == "Result") && utf8.Valid(b) {
				out = append(out, field{fname, string(b)})
			} else {
				out = append(out, field{fname, hex.EncodeToString(b)})
			}
		case fv.Kind() == reflect.String:
			out = append(out, field{fname, fv.String()})
		case fv.Kind() == reflect.Bool: // set, or left out above
			out = append(out, field{fname, name("yes")})
		case fv.Type() == reflect.TypeFor[*sp.CacheFigures]():
			out = append(out, field{fname, name(cacheLine(fv.Interface().(*sp.CacheFigures)))})
		case fv.Type().Implements(reflect.TypeFor[fmt.Stringer]()):
			out = append(out, field{fname, name(fv.Interface().(fmt.Stringer).String())})
		case strings.HasSuffix(fname, "crc32c"):
			out = append(out, field{fname, name(fmt.Sprintf("%08x", fv.Uint()))})
		case fv.CanUint():
			out = append(out, field{fname, fv.Uint()})
		case fv.CanInt():
			out = append(out, field{fname, fv.Int()})
		default:
			out = append(out, field{fname, fmt.Sprint(fv.Interface())})
		}
	}
	if infer != nil && infer.Set.Has(sp.OptNewChat) {
		out = append(out, field{"new_chat", name("yes")})
	}
	return out
}

// inferOptions maps INFER's fields to their options.
var inferOptions = map[string]sp.OptionType{
	"Model": sp.OptModel, "MaxTokens": sp.OptMaxTokens, "Temperature": sp.OptTemperature, "Seed": sp.OptSeed,
	"TopK": sp.OptTopK, "TopP": sp.OptTopP, "MinP": sp.OptMinP, "RepeatPenalty": sp.OptRepeatPenalty,
	"System": sp.OptSystem, "DeadlineMS": sp.OptDeadlineMS, "Context": sp.OptContext,
	"SchemaID": sp.OptSchema, "SchemaJSON": sp.OptSchemaJSON,
}

// snake turns a Go field name into the protocol's style: MaxTokens →
// max_tokens, DeviceID → device_id, TextCRC32C → text_crc32c.
func snake(goName string) string {
	if n, ok := snakeNames[goName]; ok {
		return n
	}
	var b strings.Builder
	rs := []rune(goName)
	for i, r := range rs {
		if i > 0 && unicode.IsUpper(r) &&
			(unicode.IsLower(rs[i-1]) || unicode.IsUpper(rs[i-1]) && i+1 < len(rs) && unicode.IsLower(rs[i+1])) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

// snakeNames are the names the rule gets wrong (acronyms run together).
var snakeNames = map[string]string{"TTFTMS": "ttft_ms"}

// stopWord is DONE's reason as docs/protocol.md names it.
func stopWord(r uint8) string {
	switch r {
	case sp.StopEOS:
		return "eos"
	case sp.StopLength:
		return "length"
	case sp.StopContext:
		return "context"
	}
	return fmt.Sprintf("reason(%d)", r)
}
