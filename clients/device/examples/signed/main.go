// Command signed asks mcpd one question in a signed session
// (docs/protocol.md §9): every frame both ways carries an HMAC-SHA256 tag
// under the device's key and a counter, so mcpd takes prompts only from
// the key's holder and the device hears answers only from its daemon.
//
// mcpd knows the key from its config file's [keys] table:
//
//	KEY=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
//	printf '[keys]\nexample-signed = "%s"\n' $KEY > /tmp/mcpd.toml
//	bin/mcpd --config /tmp/mcpd.toml --model testdata/models/tiny.gguf &
//	go run ./clients/device/examples/signed -key $KEY "How warm is it?"
//
// A wrong key is refused with ERROR AUTH_FAILED, none with AUTH_REQUIRED.
package main

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
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
	id := flag.String("id", "example-signed", "device id: mcpd's [keys] table holds its key under this name")
	keyHex := flag.String("key", "", "the device's key in hex, 16..64 bytes")
	maxTokens := flag.Int("max-tokens", 32, "tokens to generate at most")
	flag.Parse()
	raw, err := hex.DecodeString(*keyHex)
	if err != nil {
		log.Fatalf("-key: %v", err)
	}
	key, err := serialproto.NewKey(raw)
	if err != nil {
		log.Fatalf("-key: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ask(ctx, *addr, *id, key, cmp.Or(flag.Arg(0), "How warm is it?"), *maxTokens); err != nil {
		log.Fatal(err)
	}
}

func ask(ctx context.Context, addr, id string, key serialproto.Key, prompt string, maxTokens int) error {
	udp, err := device.DialUDP(addr)
	if err != nil {
		return err
	}
	defer udp.Close()

	// A key in the Config is all it takes: HELLO asks for signing, the
	// WELCOME's tag is checked, and every later frame is signed and
	// verified; frames that fail are dropped as if never received.
	c := device.New(udp, device.Config{DeviceID: id, Key: key, LinkID: 1})
	if err := c.Hello(ctx); err != nil {
		var perr *serialproto.Error
		if errors.As(err, &perr) && (perr.Code == serialproto.CodeAuthFailed || perr.Code == serialproto.CodeAuthRequired) {
			return fmt.Errorf("HELLO: mcpd refused this device's key: %w", err)
		}
		return fmt.Errorf("HELLO: %w", err)
	}
	defer c.Bye(ctx)
	fmt.Fprintf(os.Stderr, "signed session: features %#x\n", c.Welcome().Features)

	m := &serialproto.Infer{Prompt: prompt, Set: serialproto.OptionSet(0).With(serialproto.OptMaxTokens), MaxTokens: uint16(maxTokens)}
	done, err := c.Ask(ctx, m, func(text []byte) error {
		_, err := os.Stdout.Write(text)
		return err
	})
	if err != nil {
		return err
	}
	fmt.Printf("\n%d tokens, signed both ways, CRC-32C %08x verified\n", done.Tokens, done.TextCRC32C)
	return nil
}
