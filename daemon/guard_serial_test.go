package daemon

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

// TestPolicyPorts: a device on a serial port the policy does not list is
// refused with FORBIDDEN; one on a listed port (glob) is served.
func TestPolicyPorts(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ports func(path string) []string
		want  serialproto.ErrorCode
	}{
		{"port not listed", func(string) []string { return []string{"/dev/ttyUSB*"} }, serialproto.CodeForbidden},
		{"port by glob", func(p string) []string { return []string{filepath.Dir(p) + "/*"} }, 0},
		{"port by path", func(p string) []string { return []string{"/dev/ttyACM0", p} }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			master, path := openPty(t)
			d := startSerialDaemon(t, Config{Policy: AccessPolicy{Ports: tc.ports(path)}}, &testEngine{}, path)
			tr := device.NewStream(master)
			defer tr.Close()
			c := device.New(tr, device.Config{DeviceID: "uart", RTO: 200 * time.Millisecond, Retries: 3})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if got := errCode(c.Hello(ctx)); got != tc.want {
				t.Fatalf("HELLO: code %v, want %v", got, tc.want)
			}
			if tc.want == serialproto.CodeForbidden && d.Stats().Forbidden.Load() != 1 {
				t.Fatalf("forbidden counted %d", d.Stats().Forbidden.Load())
			}
		})
	}
}
