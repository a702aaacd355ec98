// Package device is the device side of MCPFrame in Go: what a
// microcontroller's firmware does to use mcpd's model, for Linux gateways,
// test rigs and tools (mcpctl is built on it). It follows
// docs/protocol.md: HELLO and the session, fragmented INFER with
// retransmission, the answer stream with cumulative ACKs and a credit
// window, the DONE checksum, optional signing (§9) and the retry rules
// (§12).
//
// A Client speaks over a Transport: DialUDP for mcpd's UDP port, DialMQTT
// through an MQTT broker, OpenSerial (or NewStream over any byte stream)
// for a serial line. Open the session with Hello, then Ask as often as
// needed, and end it with Bye:
//
//	udp, err := device.DialUDP("127.0.0.1:7700")
//	...
//	c := device.New(udp, device.Config{DeviceID: "greenhouse-1"})
//	if err := c.Hello(ctx); err != nil { ... }
//	done, err := c.Ask(ctx, &serialproto.Infer{Prompt: "Is bed 3 dry?"}, func(text []byte) error {
//		_, err := os.Stdout.Write(text)
//		return err
//	})
//
// Errors: the daemon's ERROR comes back as a *serialproto.Error (use
// errors.As and look at its Code); ErrTimeout means no answer within the
// retransmission budget; ErrChecksum an answer that arrived damaged;
// ErrNoSession an Ask before Hello. A cancelled context cancels the request
// on the daemon too. A session the daemon lost before it accepted the
// request is reopened (Hello) and the prompt sent again, once; a NO_SESSION
// after text has come, or for a prompt continuing a chat, is returned.
//
// A Client is one device: not safe for concurrent use, as a
// microcontroller does one thing at a time. Run one Client per simulated
// device, each with its own DeviceID and Transport.
//
// The programs in examples/ ask over UDP, over a serial line, in a signed
// session and through a lossy link, against bin/mcpd. Package devicetest
// has a small echoing peer that stands in for mcpd in tests.
package device
