//go:build !linux

package device

import (
	"errors"
	"os"
)

// MakeRaw is implemented for Linux terminals only.
func MakeRaw(*os.File) error {
	return errors.New("device: raw terminal mode is implemented for Linux only")
}
