package devicetest_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/clients/device/devicetest"
	"github.com/mcpd-project/mcpd/serialproto"
)

// TestPeerEchoes: the answer is the prompt, byte for byte, whatever the
// device's frame size and window, for several devices at once.
func TestPeerEchoes(t *testing.T) {
	p, err := devicetest.NewPeer()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	prompt := "Grüße aus dem Gewächshaus 🌱 " + strings.Repeat("long prompt ", 100)
	var wg sync.WaitGroup
	for i, tc := range []struct {
		maxData uint16
		window  uint8
	}{{256, 8}, {64, 2}, {32, 1}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			udp, err := device.DialUDP(p.Addr())
			if err != nil {
				t.Error(err)
				return
			}
			defer udp.Close()
			c := device.New(udp, device.Config{DeviceID: fmt.Sprintf("dev-%d", i), MaxData: tc.maxData, Window: tc.window})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := c.Hello(ctx); err != nil {
				t.Errorf("%+v: Hello: %v", tc, err)
				return
			}
			var got strings.Builder
			done, err := c.Ask(ctx, &serialproto.Infer{Prompt: prompt}, func(b []byte) error {
				if len(b) > serialproto.BodyLimit(int(tc.maxData), false) {
					t.Errorf("%+v: a TOKEN of %d bytes", tc, len(b))
				}
				got.WriteString(string(b))
				return nil
			})
			if err != nil {
				t.Errorf("%+v: Ask: %v", tc, err)
				return
			}
			if got.String() != prompt || int(done.Tokens) != len(strings.SplitAfter(prompt, " ")) {
				t.Errorf("%+v: %d tokens, answer %q", tc, done.Tokens, got.String())
			}
			if st, err := c.Status(ctx); err != nil || st.Backend != "echo" {
				t.Errorf("%+v: Status %+v, %v", tc, st, err)
			}
			if err := c.Bye(ctx); err != nil {
				t.Errorf("%+v: Bye: %v", tc, err)
			}
		}()
	}
	wg.Wait()
}

func TestPeerClose(t *testing.T) {
	p, err := devicetest.NewPeer()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil { // twice is fine
		t.Fatal(err)
	}
	udp, err := device.DialUDP(p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	c := device.New(udp, device.Config{RTO: 5 * time.Millisecond, Retries: 2})
	if err := c.Hello(context.Background()); err == nil {
		t.Fatal("a closed peer answered")
	}
}
