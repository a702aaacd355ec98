package serialproto_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// A device encodes a PING; the wire bytes are those of docs/protocol.md §2.2.
func ExampleAppendFrame() {
	buf := make([]byte, 0, serialproto.MaxFrameLen) // reused for every frame
	buf, err := serialproto.AppendFrame(buf, serialproto.Frame{
		Version: serialproto.Version1, Cmd: serialproto.CmdPing, Seq: 7, Data: []byte("ping"),
	})
	if err != nil {
		panic(err)
	}
	fmt.Printf("% x\n", buf)
	// Output: 55 01 00 04 03 07 70 69 6e 67 81
}

// Reading frames from a noisy serial line: garbage is skipped, a corrupt
// frame is reported as a non-fatal ReadError, and decoding carries on.
func ExampleDecoder() {
	good, _ := serialproto.AppendFrame(nil, serialproto.Frame{Version: 1, Cmd: serialproto.CmdPing, Seq: 1})
	bad := bytes.Clone(good)
	bad[5] ^= 0xFF // the seq byte took a hit
	line := bytes.Join([][]byte{{0x00, 0x13}, bad, good}, nil)

	d := serialproto.NewDecoder(bytes.NewReader(line))
	for {
		f, err := d.Next()
		var rerr *serialproto.ReadError
		switch {
		case err == nil:
			fmt.Println("frame:", f)
		case errors.As(err, &rerr):
			fmt.Println("skipped:", rerr.Err) // a serial link answers NACK BAD_FRAME
		case errors.Is(err, io.EOF):
			fmt.Printf("%+v\n", d.Stats())
			return
		}
	}
	// Output:
	// skipped: serialproto: frame CRC-8 mismatch
	// frame: v1 PING[-] seq=1 len=0
	// {Bytes:16 Frames:1 Skipped:9 BadCRC:1 TooLong:0 Abandoned:0}
}

// A long prompt travels as fragments and comes back whole.
func ExampleFragments() {
	infer := &serialproto.Infer{Prompt: string(bytes.Repeat([]byte("Why? "), 100))}
	body, _ := infer.AppendBody(nil)
	datas, _ := serialproto.Fragments(body, serialproto.PieceSize(128, false))
	fmt.Println(len(body), "bytes in", len(datas), "fragments")

	r := serialproto.NewReassembler(serialproto.ReassemblerConfig{})
	for _, d := range datas {
		if whole, _, err := r.Add(time.Time{}, serialproto.CmdInfer, 1, d); whole != nil && err == nil {
			var got serialproto.Infer
			_ = got.UnmarshalBody(whole)
			fmt.Println("reassembled prompt of", len(got.Prompt), "bytes")
		}
	}
	// Output:
	// 501 bytes in 5 fragments
	// reassembled prompt of 500 bytes
}
