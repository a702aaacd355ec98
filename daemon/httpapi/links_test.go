package httpapi

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/creack/pty"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/daemon/telemetry"
)

// A daemon whose only link is a serial port that does not exist: /status
// shows the port down with the cause; /readyz is ready unless
// ReadyNeedsLink, then 503 "no_link" until the port appears.
func TestReadinessFollowsLinks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ttyAMA0")
	d, err := daemon.New(daemon.Config{}, &echoEngine{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := daemon.ParseSerial(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, daemon.NewSerialLink(sc, nil)) }()
	defer func() { cancel(); <-done }()
	waitFor(t, func() bool {
		st := d.LinkStates()
		return len(st) == 1 && st[0].Error == "no such device"
	})

	get := func(srv *httptest.Server, p string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	lenient := httptest.NewServer(New(Config{Daemon: d}))
	defer lenient.Close()
	strict := httptest.NewServer(New(Config{Daemon: d, ReadyNeedsLink: true}))
	defer strict.Close()

	down := "link serial:" + path + " down: no such device\n"
	if code, body := get(lenient, "/readyz"); code != 200 || body != "ready \n"+down {
		t.Errorf("lenient readyz %d %q", code, body)
	}
	if code, body := get(strict, "/readyz"); code != 503 || body != "no_link no link is up\n"+down {
		t.Errorf("strict readyz %d %q", code, body)
	}
	_, body := get(lenient, "/status")
	var st Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	if ls := st.Daemon.LinkStates; len(ls) != 1 || ls[0].Up || ls[0].Error != "no such device" || !strings.Contains(ls[0].Hint, "ttyAMA") || st.Daemon.LinksUp != 0 {
		t.Fatalf("/status link states %+v", st.Daemon.LinkStates)
	}

	// The metrics say the same.
	m := telemetry.NewMetrics(d, nil)
	withMetrics := httptest.NewServer(New(Config{Daemon: d, Metrics: m}))
	defer withMetrics.Close()
	if _, body := get(withMetrics, "/metrics"); !strings.Contains(body, `mcpd_link_up{link="serial:`+path+`"} 0`) {
		t.Errorf("metrics lack the port down")
	}

	// The port appears: ready, nothing listed down.
	master, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	// Both ends stay referenced: a master the garbage collector closes
	// hangs the terminal up.
	defer master.Close()
	defer tty.Close()
	if err := os.Symlink(tty.Name(), path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return d.Snapshot(context.Background()).LinksUp == 1 })
	if code, body := get(strict, "/readyz"); code != 200 || body != "ready \n" {
		t.Errorf("strict readyz with the port up %d %q", code, body)
	}
	if _, body := get(withMetrics, "/metrics"); !strings.Contains(body, `mcpd_link_up{link="serial:`+path+`"} 1`) {
		t.Errorf("metrics lack the port up")
	}
}
