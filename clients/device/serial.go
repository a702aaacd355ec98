package device

import (
	"fmt"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
	"go.bug.st/serial"
)

// OpenSerial opens the device's end of a serial line (a USB adapter, a
// UART, a pseudo-terminal) at baud, 8N1, and returns it as a Stream.
// Closing the Stream closes the port.
func OpenSerial(path string, baud int) (*Stream, error) {
	port, err := serial.Open(path, &serial.Mode{BaudRate: baud, DataBits: 8})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	// Reads return (0, nil) every 50 ms of silence; the decoder treats
	// that as an idle line.
	_ = port.SetReadTimeout(50 * time.Millisecond)
	return NewStream(port), nil
}

// SerialRTO is the retransmission timeout of docs/protocol.md §7.1 for a
// device with credit window on a line of baud bits/s:
// 2 × window × T(263) + 100 ms, T(263) being a full frame's time on the
// line at 10 bits a byte. Use it as Config.RTO on a slow line, where the
// 250 ms default would retransmit frames still on their way. A baud of 0
// is taken as 115200 and a window of 0 as Config's default, 4.
func SerialRTO(baud int, window uint8) time.Duration {
	if baud <= 0 {
		baud = 115200
	}
	if window == 0 {
		window = 4
	}
	return time.Duration(2*int(window)*serialproto.MaxFrameLen*10)*time.Second/time.Duration(baud) + 100*time.Millisecond
}
