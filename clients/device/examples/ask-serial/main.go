// Command ask-serial asks mcpd one question over a serial line, as a
// microcontroller on a UART would: mcpd listens on one end of the cable,
// this program opens the other.
//
// Without hardware, socat makes the cable out of two pseudo-terminals:
//
//	socat pty,raw,echo=0,link=/tmp/mcpd-uart pty,raw,echo=0,link=/tmp/device-uart &
//	bin/mcpd --model testdata/models/tiny.gguf --serial /tmp/mcpd-uart:115200 &
//	go run ./clients/device/examples/ask-serial -port /tmp/device-uart "How warm is it?"
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

func main() {
	port := flag.String("port", "/dev/ttyUSB0", "the device's end of the serial line")
	baud := flag.Int("baud", 115200, "baud rate, as in mcpd's --serial PATH:BAUD")
	maxTokens := flag.Int("max-tokens", 32, "tokens to generate at most")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ask(ctx, *port, *baud, cmp.Or(flag.Arg(0), "How warm is it?"), *maxTokens); err != nil {
		log.Fatal(err)
	}
}

func ask(ctx context.Context, port string, baud int, prompt string, maxTokens int) error {
	line, err := device.OpenSerial(port, baud)
	if err != nil {
		return err
	}
	defer line.Close()

	// A small device: 64-byte frames, two in flight, and a retransmission
	// timeout that allows for the frames' time on the line (§7.1).
	const window = 2
	c := device.New(line, device.Config{DeviceID: "example-uart", MaxData: 64, Window: window, RTO: device.SerialRTO(baud, window)})
	if err := c.Hello(ctx); err != nil {
		return fmt.Errorf("HELLO: %w", err)
	}
	defer c.Bye(ctx)

	m := &serialproto.Infer{Prompt: prompt, Set: serialproto.OptionSet(0).With(serialproto.OptMaxTokens), MaxTokens: uint16(maxTokens)}
	done, err := c.Ask(ctx, m, func(text []byte) error {
		_, err := os.Stdout.Write(text)
		return err
	})
	if err != nil {
		return err
	}
	fmt.Printf("\n%d tokens over %s at %d baud, CRC-32C %08x verified\n", done.Tokens, port, baud, done.TextCRC32C)
	return nil
}
