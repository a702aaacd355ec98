package httpapi

import (
	"context"
	"image/png"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/daemon"
)

// pageFixture is a daemon with a device connected,
// and the status page's chart given two minutes of samples.
func pageFixture(t *testing.T) (*fixture, *Server) {
	t.Helper()
	f := start(t, daemon.Config{}, &echoEngine{})
	c, err := device.DialUDP(f.udp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	dev := device.New(c, device.Config{DeviceID: "greenhouse-7"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := dev.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	// A server of our own to reach its chart's history.
	srv := New(Config{Daemon: f.d, Version: "test"})
	now := time.Now()
	for i, total := range []int64{0, 120, 480, 600, 1500, 1800, 1800, 2400, 2640, 3300, 3600, 4800} {
		srv.history.add(now.Add(time.Duration(i-12)*sampleEvery), total, sampleEvery)
	}
	return f, srv
}

// The page: served from the binary, no script and nothing fetched from
// elsewhere, with the state, engine, model, links, devices and a chart.
func TestStatusPage(t *testing.T) {
	_, srv := pageFixture(t)
	hs := httpServe(t, srv)
	resp, err := http.Get(hs + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	page := string(b)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Fatalf("%d %v", resp.StatusCode, resp.Header)
	}
	for _, want := range []string{`id="state">ready<`, `id="backend">echo<`, `id="model">echo-model<`, "<td>greenhouse-7</td>",
		`<span class="up">up</span>`, `<svg id="chart"`, "<rect", `id="devices">1<`} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %s", want)
		}
	}
	if regexp.MustCompile(`(?i)<script|src="http|href="http|@import|url\(`).MatchString(page) {
		t.Errorf("the page loads something from elsewhere or runs script")
	}
	if resp, err := http.Get(hs + "/no-such-page"); err != nil || resp.StatusCode != 404 {
		t.Fatalf("/no-such-page: %v", err)
	}
}

// httpServe serves srv on loopback for the test's life.
func httpServe(t *testing.T, srv *Server) string {
	t.Helper()
	hs := &http.Server{Handler: srv}
	ln, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { hs.Close() })
	return "http://" + ln.Addr().String()
}

// chromiumPath finds Debian's chromium; MCPD_REQUIRE_CHROMIUM=1 (CI) makes
// its absence a failure instead of a skip.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("MCPD_REQUIRE_CHROMIUM") == "1" {
		t.Fatal("chromium not found (Debian package chromium)")
	}
	t.Skip("chromium not installed (apt install chromium); MCPD_REQUIRE_CHROMIUM=1 makes this fail")
	return ""
}

// The page in a real browser: headless Chromium renders it (the DOM it
// builds has the state, the device and the chart) and takes a screenshot,
// kept in $MCPD_ARTIFACTS (or the test's temporary directory), in which
// the state badge's green is drawn.
func TestStatusPageInChromium(t *testing.T) {
	chromium := chromiumPath(t)
	_, srv := pageFixture(t)
	url := httpServe(t, srv) + "/"
	dir := os.Getenv("MCPD_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(dir, "status-page.png")
	profile := t.TempDir()
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
			"--disable-background-networking", "--user-data-dir=" + profile, "--window-size=1100,1000"}
		out, err := exec.CommandContext(ctx, chromium, append(base, args...)...).Output()
		if err != nil {
			t.Fatalf("chromium %v: %v", args, err)
		}
		return string(out)
	}
	dom := run("--dump-dom", url)
	for _, want := range []string{`id="state">ready<`, "greenhouse-7", `<svg id="chart"`} {
		if !strings.Contains(dom, want) {
			t.Errorf("the DOM Chromium built lacks %s", want)
		}
	}
	run("--screenshot="+shot, url)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	green, bars := false, false
	bounds := img.Bounds()
	for y := bounds.Min.Y; y < bounds.Max.Y && !(green && bars); y++ {
		for x := bounds.Min.X; x < bounds.Max.X; x++ {
			r, g, b, _ := img.At(x, y).RGBA()
			switch {
			case r>>8 == 0x2e && g>>8 == 0x7d && b>>8 == 0x32:
				green = true
			case r>>8 == 0x3b && g>>8 == 0x6f && b>>8 == 0xd8:
				bars = true
			}
		}
	}
	if !green || !bars {
		t.Fatalf("screenshot %s: state badge drawn %v, chart bars drawn %v", shot, green, bars)
	}
	t.Logf("screenshot: %s", shot)
}

func netListen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
