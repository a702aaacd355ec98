package impair_test

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/mcpd-project/mcpd/internal/impair"
)

// A proxy that loses every datagram towards the server: the client hears
// nothing, and the proxy counts what it dropped.
func ExampleNewUDPProxy() {
	server, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer server.Close()
	p, err := impair.NewUDPProxy(impair.UDPConfig{
		Target: server.LocalAddr().(*net.UDPAddr).AddrPort(),
		Up:     impair.Faults{Loss: 1},
		Seed:   1,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.Run(ctx)

	client, _ := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(p.Addr()))
	defer client.Close()
	for range 3 {
		client.Write([]byte("ping"))
	}
	_ = server.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_, _, err = server.ReadFromUDP(make([]byte, 16))
	fmt.Println("server heard something:", err == nil)
	for deadline := time.Now().Add(5 * time.Second); p.Stats().Up.In < 3 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond) // a loaded machine: let the proxy read all three
	}
	fmt.Printf("%+v\n", p.Stats().Up)
	// Output:
	// server heard something: false
	// {In:3 Out:0 Dropped:3 Duplicated:0 Reordered:0 Replayed:0}
}
