package main

import (
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	sp "github.com/mcpd-project/mcpd/serialproto"
)

// runDecode explains frames for firmware authors: hex arguments are decoded
// as datagrams; with no arguments, standard input is decoded as a byte
// stream (a serial capture) with the resync rule.
func runDecode(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("decode", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: mcpctl decode [-hex] [FRAME-HEX ...]\n\nDecodes MCPFrames and their bodies. Each argument is one frame in hex\n(spaces and colons ignored), checked as a UDP datagram. Without arguments,\nstandard input is decoded as a serial byte stream (raw bytes, or hex text\nwith -hex), skipping garbage as a receiver does.\n\nFlags:")
		fs.PrintDefaults()
	}
	hexIn := fs.Bool("hex", false, "standard input is hex text, not raw bytes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		bad := 0
		for _, a := range fs.Args() {
			raw, err := parseHex(a)
			if err == nil {
				var f sp.Frame
				if f, err = sp.Decode(raw); err == nil {
					describe(stdout, f)
					continue
				}
			}
			bad++
			fmt.Fprintf(stdout, "%s: %v\n", a, err)
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
			fmt.Fprintf(stdout, "@%d ", d.Offset()-int64(f.Len()))
			describe(stdout, f)
		case errors.As(err, &rerr):
			fmt.Fprintf(stdout, "@%d rejected: %v\n", rerr.Offset, rerr.Err)
		case errors.Is(err, sp.ErrIdle):
		case errors.Is(err, io.EOF):
			st := d.Stats()
			fmt.Fprintf(stdout, "%d bytes: %d frames, %d bytes skipped, %d bad CRC, %d bad length\n",
				st.Bytes, st.Frames, st.Skipped, st.BadCRC, st.TooLong)
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

// describe prints a frame and, when the command is known and the frame is
// not a fragment, its parsed body.
func describe(w io.Writer, f sp.Frame) {
	fmt.Fprintf(w, "%v", f)
	switch {
	case f.Version != sp.Version1:
		fmt.Fprintf(w, "  (version %d: a v1 receiver answers ERROR UNSUPPORTED_VERSION)\n", f.Version)
	case f.Flags&sp.FlagSigned != 0:
		fmt.Fprintf(w, "  (signed: body needs the key to verify)\n")
	case f.Flags&sp.FlagFragment != 0 && len(f.Data) >= 2:
		fmt.Fprintf(w, "  fragment %d of %d, %d bytes\n", f.Data[0], f.Data[1], len(f.Data)-2)
	case !f.Cmd.Known():
		fmt.Fprintf(w, "  (unknown command: answered with ERROR UNKNOWN_COMMAND)\n")
	default:
		m, err := sp.ParseBody(f.Cmd, f.Data)
		if err != nil {
			fmt.Fprintf(w, "  body: %v\n", err)
			return
		}
		fmt.Fprintf(w, "  %s\n", strings.TrimPrefix(fmt.Sprintf("%+v", m), "&"))
	}
}
