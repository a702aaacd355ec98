// Command ask-udp asks mcpd one question over UDP, as a Wi-Fi device
// would, and prints the answer as it streams in.
//
//	bin/mcpd --model testdata/models/tiny.gguf &    # UDP 127.0.0.1:7700
//	go run ./clients/device/examples/ask-udp "How warm is it?"
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
	addr := flag.String("addr", "127.0.0.1:7700", "mcpd's UDP address")
	maxTokens := flag.Int("max-tokens", 32, "tokens to generate at most")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ask(ctx, *addr, cmp.Or(flag.Arg(0), "How warm is it?"), *maxTokens); err != nil {
		log.Fatal(err) // a *serialproto.Error when mcpd answered ERROR
	}
}

func ask(ctx context.Context, addr, prompt string, maxTokens int) error {
	udp, err := device.DialUDP(addr)
	if err != nil {
		return err
	}
	defer udp.Close()

	c := device.New(udp, device.Config{DeviceID: "example-udp"})
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
	fmt.Printf("\n%d tokens, %d bytes, CRC-32C %08x verified\n", done.Tokens, done.TextBytes, done.TextCRC32C)
	return nil
}
