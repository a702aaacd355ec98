package atomicfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestWrite: the new content replaces the old whole, with mode 0600 and
// no temporary file left; a failed write leaves the old file as it was.
func TestWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "f")
	put := func(s string, fail error) error {
		return Write(path, func(w io.Writer) error {
			if _, err := io.WriteString(w, s); err != nil {
				return err
			}
			return fail
		})
	}
	for _, tc := range []struct {
		write, want string
		fail        error
	}{
		{"first", "first", nil},
		{"second", "second", nil},
		{"broken", "second", errors.New("disk full")},
	} {
		err := put(tc.write, tc.fail)
		if !errors.Is(err, tc.fail) || (tc.fail == nil) != (err == nil) {
			t.Fatalf("write %q: %v", tc.write, err)
		}
		got, rerr := os.ReadFile(path)
		fi, serr := os.Stat(path)
		if rerr != nil || serr != nil || string(got) != tc.want || fi.Mode().Perm() != 0o600 {
			t.Fatalf("after %q: %q %v %v %v", tc.write, got, fi, rerr, serr)
		}
		if tmp, _ := filepath.Glob(path + ".*.tmp"); len(tmp) != 0 {
			t.Fatalf("temporary files left: %v", tmp)
		}
	}
}
