package daemon

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/internal/impair"
	"github.com/mcpd-project/mcpd/serialproto"
)

// TestSACKNegotiatedAndOldDevicesServed: the daemon grants SACK to a device
// that asks (§8.2) and not to one that does not, and both get long answers
// exactly through a link that loses a fifth of the daemon's datagrams and
// reorders some — the old one go-back-N, the new one by resending holes,
// which costs it fewer retransmissions.
func TestSACKNegotiatedAndOldDevicesServed(t *testing.T) {
	d, addr := startDaemon(t, Config{MinRTO: 5 * time.Millisecond}, &testEngine{})
	target, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	retransmits := map[bool]int64{}
	for _, old := range []bool{true, false} {
		p, err := impair.NewUDPProxy(impair.UDPConfig{Target: target, Down: impair.Faults{Loss: 0.2, Reorder: 0.1, ReorderHold: 5 * time.Millisecond}, Seed: 5})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = p.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })

		c := dial(t, p.Addr().String(), device.Config{DeviceID: "dev", MaxData: 32, Window: 8, RTO: 50 * time.Millisecond, MinRTO: 5 * time.Millisecond, Retries: 30, NoSACK: old})
		if granted := c.Welcome().Features&serialproto.FeatureSACK != 0; granted == old {
			t.Fatalf("NoSACK=%v: WELCOME features %#x", old, c.Welcome().Features)
		}
		before := d.Stats().Retransmits.Load()
		for k := range 10 {
			prompt := strings.Repeat("word ", 60) + string(rune('a'+k))
			var got strings.Builder
			actx, acancel := context.WithTimeout(context.Background(), 20*time.Second)
			_, err := c.Ask(actx, &serialproto.Infer{Prompt: prompt}, func(b []byte) error { got.Write(b); return nil })
			acancel()
			if err != nil || got.String() != answerFor(prompt) {
				t.Fatalf("NoSACK=%v request %d: %v, %d bytes of %d", old, k, err, got.Len(), len(answerFor(prompt)))
			}
		}
		retransmits[old] = d.Stats().Retransmits.Load() - before
	}
	t.Logf("chunks resent for 10 answers of ~12 chunks: go-back-N %d, SACK %d", retransmits[true], retransmits[false])
	if retransmits[false] >= retransmits[true] {
		t.Errorf("SACK resent %d chunks, go-back-N %d: holes only should cost less", retransmits[false], retransmits[true])
	}
}
