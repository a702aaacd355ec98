// Command lossy-link asks mcpd one question through a bad Wi-Fi link: an
// impairing UDP proxy in this process loses, duplicates and reorders the
// datagrams both ways (seeded, so a run replays the same faults), and the
// device client's retransmission, reassembly and cumulative ACKs still
// deliver the answer whole, checked against DONE's CRC-32C.
//
//	bin/mcpd --model testdata/models/tiny.gguf &
//	go run ./clients/device/examples/lossy-link -loss 0.2 "How warm is it?"
//
// mcpctl impair runs the same proxy on its own, for any device.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/netip"
	"os"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/internal/impair"
	"github.com/mcpd-project/mcpd/serialproto"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:7700", "mcpd's UDP address (loopback)")
	loss := flag.Float64("loss", 0.2, "probability a datagram is lost, each way")
	dup := flag.Float64("dup", 0.05, "probability a datagram is duplicated")
	reorder := flag.Float64("reorder", 0.1, "probability a datagram is held back behind the next")
	seed := flag.Uint64("seed", 1, "the faults' random seed")
	maxTokens := flag.Int("max-tokens", 32, "tokens to generate at most")
	flag.Parse()
	target, err := netip.ParseAddrPort(*addr)
	if err != nil {
		log.Fatalf("-addr: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	faults := impair.Faults{Loss: *loss, Duplicate: *dup, Reorder: *reorder}
	proxy, err := impair.NewUDPProxy(impair.UDPConfig{Target: target, Up: faults, Down: faults, Seed: *seed})
	if err != nil {
		log.Fatal(err)
	}
	proxyCtx, stopProxy := context.WithCancel(context.Background())
	proxyDone := make(chan error, 1)
	go func() { proxyDone <- proxy.Run(proxyCtx) }()

	udp, err := device.DialUDP(proxy.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	// A short retransmission timeout and a generous budget suit a lossy
	// link; AskRetrying also waits out BUSY answers under the same seq.
	c := device.New(udp, device.Config{DeviceID: "example-lossy", RTO: 100 * time.Millisecond, Retries: 12})
	err = ask(ctx, c, cmp.Or(flag.Arg(0), "How warm is it?"), *maxTokens)
	udp.Close()
	stopProxy()
	if perr := <-proxyDone; perr != nil && !errors.Is(perr, context.Canceled) {
		log.Print(perr)
	}
	st := proxy.Stats()
	fmt.Fprintf(os.Stderr, "link: to mcpd %d in, %d dropped, %d duplicated, %d reordered; to the device %d in, %d dropped, %d duplicated, %d reordered\n",
		st.Up.In, st.Up.Dropped, st.Up.Duplicated, st.Up.Reordered, st.Down.In, st.Down.Dropped, st.Down.Duplicated, st.Down.Reordered)
	if err != nil {
		log.Fatal(err)
	}
}

func ask(ctx context.Context, c *device.Client, prompt string, maxTokens int) error {
	if err := c.Hello(ctx); err != nil {
		return fmt.Errorf("HELLO: %w", err)
	}
	m := &serialproto.Infer{Prompt: prompt, Set: serialproto.OptionSet(0).With(serialproto.OptMaxTokens), MaxTokens: uint16(maxTokens)}
	done, retries, err := c.AskRetrying(ctx, m, func(text []byte) error {
		_, err := os.Stdout.Write(text)
		return err
	}, 5)
	if err != nil {
		return fmt.Errorf("ask (after %d retries): %w", retries, err)
	}
	fmt.Printf("\n%d tokens, CRC-32C %08x verified\n", done.Tokens, done.TextCRC32C)
	// BYE may be lost too; the session then expires on the daemon's
	// heartbeat, so its error is not worth reporting.
	_ = c.Bye(ctx)
	return nil
}
