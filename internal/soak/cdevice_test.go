package soak

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/internal/impair"
	"github.com/mcpd-project/mcpd/serialproto"
)

// buildCDevice compiles clients/c/tests/soak_device.c, the C library as a
// soak device, with the flags the library promises to be clean under.
func buildCDevice(t *testing.T) string {
	t.Helper()
	cc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skipf("gcc builds the C device: %v", err)
	}
	src, err := filepath.Glob("../../clients/c/src/*.c")
	if err != nil || len(src) == 0 {
		t.Fatalf("C sources: %v", err)
	}
	out := filepath.Join(t.TempDir(), "soak_device")
	args := append([]string{"-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2", "-DMCPF_SIGN=0",
		"-I../../clients/c/include", "-o", out, "../../clients/c/tests/soak_device.c"}, src...)
	if b, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, b)
	}
	return out
}

// cDevices runs n C devices (soak_device) against addr for the scenario's
// duration and tallies their lines as the Go devices' outcomes are.
func cDevices(t *testing.T, bin, addr string, n int, args ...string) Row {
	t.Helper()
	var (
		mu  sync.Mutex
		row Row
		wg  sync.WaitGroup
	)
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("c-%d", i)
			cmd := exec.Command(bin, append([]string{"--udp", addr, "--device-id", id, "--ms", strconv.FormatInt(duration(t).Milliseconds(), 10)}, args...)...)
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			if err := cmd.Run(); err != nil {
				t.Errorf("C device %s: %v\n%s", id, err, errb.String())
				return
			}
			var mine Row
			sc := bufio.NewScanner(&out)
			for sc.Scan() {
				f := strings.SplitN(sc.Text(), "\t", 3)
				if len(f) != 3 {
					t.Errorf("C device %s: line %q", id, sc.Text())
					continue
				}
				want := AnswerFor(fmt.Sprintf("%s request %s: soil 31 %% air 24.5 C", id, f[0]))
				mine.Requests++
				switch {
				case f[1] == "DONE" && f[2] == want:
					mine.Done++
					mine.Bytes += int64(len(f[2]))
				case f[1] == "DONE":
					mine.Wrong++
				case f[1] == "BAD":
					mine.Caught++
				case strings.HasPrefix(f[1], "ERROR:"):
					code, _ := strconv.Atoi(strings.TrimPrefix(f[1], "ERROR:"))
					mine.Errors++
					mine.count(serialproto.ErrorCode(code), 1)
					if !strings.HasPrefix(want, f[2]) {
						mine.Wrong++
					}
				default:
					mine.Lost++
				}
			}
			mu.Lock()
			row.Add(mine)
			mu.Unlock()
		}()
	}
	wg.Wait()
	row.Elapsed = time.Since(start)
	return row
}

// TestLossyUDPC: the C library's device (clients/c) behind the same links
// as TestLossyUDP's Go devices — 4 devices, window 4, max_data 64, the
// default RTO floor — with SACK (a hold buffer of 3 chunks) and without
// (go-back-N), each faulty row against its clean twin of the same run.
func TestLossyUDPC(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs C devices")
	}
	bin := buildCDevice(t)
	clean := map[time.Duration]float64{}
	for _, tc := range []struct {
		name    string
		faults  impair.Faults
		hold    int
		compare bool
	}{
		{"C devices, udp 1 ms delay each way, no faults (baseline of the rows below)", impair.Faults{Delay: wifi.Delay}, 3, false},
		{"C devices, udp 10% loss, 5% dup, 10% reorder, SACK", wifi, 3, true},
		{"C devices, udp 10% loss, 5% dup, 10% reorder, go-back-N", wifi, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &Echo{}
			r := startDaemon(t, daemon.Config{PeerRate: -1}, e)
			p := startProxy(t, r.addr, tc.faults, 11)
			row := cDevices(t, bin, p.Addr().String(), 4, "--max-data", "64", "--window", "4", "--hold", strconv.Itoa(tc.hold), "--retries", "20")
			settle(t, r.d)
			row.Scenario = tc.name
			row.Duplicated = e.Duplicated()
			row.Retransmits = r.d.Stats().Retransmits.Load()
			row.Note = proxyNote(p)
			if base, ok := clean[tc.faults.Delay]; ok && tc.compare {
				row.Note = fmt.Sprintf("**%.0f %% of the clean link's goodput** (%s, same run); ", 100*row.Goodput()/base, formatRate(base)) + row.Note
			}
			if !tc.compare {
				clean[tc.faults.Delay] = row.Goodput()
			}
			check(t, row, false)
			record(t, row)
		})
	}
}
