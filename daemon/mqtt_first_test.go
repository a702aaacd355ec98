package daemon

import (
	"bytes"
	"testing"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/internal/mosquittotest"
	"github.com/mcpd-project/mcpd/serialproto"
)

// TestMQTTFirstAnswerNotHeldBack: a session's first answer over MQTT goes
// out at once, none of its chunks held back or sent again. The broker
// authenticated the device and the answer goes to its own down topic, so
// the reflection bound of an unproven UDP source (§7.2) does not apply.
// Taken for one (an MQTT peer has no source address), the first stream
// spent the bytes the device had sent: its TOKEN and DONE did not fit,
// were held back, and came on retransmissions after the device's repeated
// ACKs — about 1 s for the first request, 1 ms for the next. On a clean
// loopback broker nothing is lost, so every held-back or retransmitted
// frame is that delay.
func TestMQTTFirstAnswerNotHeldBack(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{"dev-plain", "dev-signed"}})
	key, err := serialproto.NewKey(bytes.Repeat([]byte{9}, 32))
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{DefaultMaxTokens: 1000, Keys: map[string]serialproto.Key{"dev-signed": key}}, &testEngine{}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	startMQTTDaemon(t, d, daemonMQTT(b), true)
	for _, tc := range []struct {
		id  string
		key serialproto.Key
	}{{"dev-plain", serialproto.Key{}}, {"dev-signed", key}} {
		t.Run(tc.id, func(t *testing.T) {
			held, resent := d.Stats().Unanswered.Load(), d.Stats().Retransmits.Load()
			c := helloOver(t, dialMQTT(t, b, tc.id), device.Config{DeviceID: tc.id, MaxData: 256, Window: 4, Key: tc.key})
			const prompt = "What is the soil moisture?"
			text, done, err := ask(t, c, prompt)
			if err != nil || text != answerFor(prompt) || done.Reason != serialproto.StopEOS {
				t.Fatalf("first answer %q, DONE %+v, err %v", text, done, err)
			}
			if n := d.Stats().Unanswered.Load() - held; n != 0 {
				t.Errorf("%d transmissions of the first answer held back by the reflection bound", n)
			}
			if n := d.Stats().Retransmits.Load() - resent; n != 0 {
				t.Errorf("%d chunks of the first answer sent again", n)
			}
			if n := c.Retransmits(); n != 0 {
				t.Errorf("the device sent %d frames again", n)
			}
		})
	}
}
