// Command ask-mqtt asks mcpd one question through an MQTT broker, as a
// Wi-Fi device that already speaks MQTT would, and prints the answer as it
// streams in (docs/protocol.md §7.4).
//
//	bin/mcpd --model testdata/models/tiny.gguf --mqtt tcp://mcpd:PW@127.0.0.1:1883 &
//	go run ./clients/device/examples/ask-mqtt -broker tcp://127.0.0.1:1883 -id kitchen -password-file kitchen.pw "How warm is it?"
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

func main() {
	broker := flag.String("broker", "tcp://127.0.0.1:1883", "the broker mcpd serves")
	id := flag.String("id", "example-mqtt", "device id: the topics' and, by default, the broker account's")
	passwordFile := flag.String("password-file", "", "file holding the broker account's password")
	maxTokens := flag.Int("max-tokens", 32, "tokens to generate at most")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := device.MQTTConfig{URL: *broker, DeviceID: *id}
	if *passwordFile != "" {
		pw, err := os.ReadFile(*passwordFile)
		if err != nil {
			log.Fatal(err)
		}
		cfg.Username, cfg.Password = *id, strings.TrimSpace(string(pw))
	}
	if err := ask(ctx, cfg, cmp.Or(flag.Arg(0), "How warm is it?"), *maxTokens); err != nil {
		log.Fatal(err) // a *serialproto.Error when mcpd answered ERROR
	}
}

func ask(ctx context.Context, cfg device.MQTTConfig, prompt string, maxTokens int) error {
	tr, err := device.DialMQTT(ctx, cfg) // a refused account fails here, with the broker's reason
	if err != nil {
		return err
	}
	defer tr.Close()

	c := device.New(tr, device.Config{DeviceID: cfg.DeviceID})
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
	fmt.Printf("\n%d tokens over MQTT (instance %q), CRC-32C %08x verified\n", done.Tokens, tr.Instance(), done.TextCRC32C)
	return nil
}
