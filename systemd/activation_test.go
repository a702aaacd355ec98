package systemd

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// The activation tests run this test binary again with sockets at fd 3…
// and the LISTEN_* variables, as systemd starts a socket-activated
// service. LISTEN_PID must name the child, which only the child knows.
func TestMain(m *testing.M) {
	if os.Getenv("MCPD_ACTIVATION_CHILD") != "" {
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
		conns, err := UDPSockets()
		if err != nil {
			os.Stdout.WriteString("error: " + err.Error() + "\n")
			os.Exit(0)
		}
		for _, c := range conns {
			os.Stdout.WriteString(c.LocalAddr().String() + "\n")
		}
		again, _ := UDPSockets() // taken once
		os.Stdout.WriteString("again " + strconv.Itoa(len(again)) + "\n")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func activate(t *testing.T, files ...*os.File) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "MCPD_ACTIVATION_CHILD=1", "LISTEN_FDS="+strconv.Itoa(len(files)))
	cmd.ExtraFiles = files
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return string(out)
}

func TestUDPSocketsFromActivation(t *testing.T) {
	a, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	fa, _ := a.File()
	fb, _ := b.File()
	defer fa.Close()
	defer fb.Close()
	out := activate(t, fa, fb)
	want := a.LocalAddr().String() + "\n" + b.LocalAddr().String() + "\nagain 0\n"
	if out != want {
		t.Fatalf("child saw %q, want %q", out, want)
	}
}

func TestUDPSocketsRefusesAStreamSocket(t *testing.T) {
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, _ := l.File()
	defer f.Close()
	if out := activate(t, f); !strings.Contains(out, "not a datagram socket") {
		t.Fatalf("child: %q", out)
	}
}

func TestUDPSocketsWithoutActivation(t *testing.T) {
	t.Setenv("LISTEN_PID", "")
	t.Setenv("LISTEN_FDS", "")
	if conns, err := UDPSockets(); err != nil || len(conns) != 0 {
		t.Fatalf("%v %v", conns, err)
	}
}
