package device_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/clients/device/devicetest"
	"github.com/mcpd-project/mcpd/serialproto"
)

// A device asks a question: HELLO, the prompt, the answer streamed under
// flow control and checked against DONE's CRC-32C, BYE. devicetest.Peer
// stands in for mcpd, whose answer is the prompt; against mcpd, dial its
// UDP address (127.0.0.1:7700 by default).
func Example() {
	mcpd, err := devicetest.NewPeer()
	if err != nil {
		log.Fatal(err)
	}
	defer mcpd.Close()

	udp, err := device.DialUDP(mcpd.Addr())
	if err != nil {
		log.Fatal(err)
	}
	defer udp.Close()
	c := device.New(udp, device.Config{DeviceID: "greenhouse-esp32", MaxData: 64, Window: 2})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Hello(ctx); err != nil {
		log.Fatal(err)
	}
	done, err := c.Ask(ctx, &serialproto.Infer{Prompt: "Which bed needs water first?"}, func(text []byte) error {
		fmt.Printf("%s", text)
		return nil
	})
	var refused *serialproto.Error
	switch {
	case errors.As(err, &refused) && refused.Code == serialproto.CodeBusy:
		log.Fatal("busy: ask again later under the same seq (AskRetrying does)")
	case errors.As(err, &refused):
		log.Fatalf("mcpd refused: %v", refused.Code)
	case errors.Is(err, device.ErrTimeout):
		log.Fatal("no answer: is mcpd running, is the link up?")
	case errors.Is(err, device.ErrChecksum):
		log.Fatal("the answer arrived damaged")
	case err != nil:
		log.Fatal(err)
	}
	fmt.Printf("\n%d tokens, %d bytes, CRC-32C %08x\n", done.Tokens, done.TextBytes, done.TextCRC32C)
	if err := c.Bye(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// Which bed needs water first?
	// 5 tokens, 28 bytes, CRC-32C 7fa60706
}

// The retransmission timeout for a device with a two-frame window on a
// 115200-baud UART.
func ExampleSerialRTO() {
	fmt.Println(device.SerialRTO(115200, 2))
	// Output: 191.319444ms
}
