package serialproto

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestInteropCleanRoom runs the clean-room Python implementation in
// testdata/interop — written from docs/protocol.md alone, without reading
// this package — against the test vectors and the spec's own examples. It
// is how we know the spec is complete enough for a second implementation.
// CI installs python3 and sets MCPD_REQUIRE_INTEROP=1 so it can't be
// skipped there.
func TestInteropCleanRoom(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("MCPD_REQUIRE_INTEROP") != "" {
			t.Fatal("python3 not found and MCPD_REQUIRE_INTEROP is set")
		}
		t.Skip("python3 not installed")
	}
	for _, args := range [][]string{
		{"testdata/interop/check_vectors.py", vectorsPath},
		{"testdata/interop/check_vectors.py", "--selftest"},
	} {
		out, err := exec.Command(py, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("python3 %v: %v\n%s", args, err, out)
		}
		t.Logf("%s", lastLine(out))
	}
}

func lastLine(b []byte) string {
	s := strings.TrimRight(string(b), "\n")
	return s[strings.LastIndexByte(s, '\n')+1:]
}
