package kvstate

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// Identity fingerprints the model file at path and the engine build that
// computes on it (build: llama.cpp's version and the engine's settings
// that shape its KV cache): a warm cache is valid only for both.
//
// Hashing a whole GGUF file would cost seconds at every start on a small
// board (a 1B model is about 1 GB), so Identity hashes its size, its first
// MiB (the GGUF header: metadata and tensor layout), and 64 blocks of
// 4 KiB spread evenly over the rest plus its last 4 KiB: two models with
// the same shape and different weights (mcpd-mkmodel seeds, a fine-tune)
// differ there.
func Identity(path, build string) ([32]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return [32]byte{}, fmt.Errorf("model identity: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return [32]byte{}, fmt.Errorf("model identity: %w", err)
	}
	return identity(f, fi.Size(), build)
}

const (
	identityHead    = 1 << 20
	identityBlock   = 4 << 10
	identitySamples = 64
)

func identity(r io.ReaderAt, size int64, build string) ([32]byte, error) {
	h := sha256.New()
	fmt.Fprintf(h, "mcpd warm cache v%d\x00%s\x00", Version, build)
	h.Write(binary.LittleEndian.AppendUint64(nil, uint64(size)))
	buf := make([]byte, identityHead)
	read := func(off, n int64) error {
		if off < 0 {
			off = 0
		}
		n = min(n, size-off)
		if n <= 0 {
			return nil
		}
		if _, err := r.ReadAt(buf[:n], off); err != nil {
			return fmt.Errorf("model identity: %w", err)
		}
		h.Write(buf[:n])
		return nil
	}
	if err := read(0, identityHead); err != nil {
		return [32]byte{}, err
	}
	if size > identityHead {
		step := (size - identityHead) / identitySamples
		for i := range int64(identitySamples) {
			if err := read(identityHead+i*step, identityBlock); err != nil {
				return [32]byte{}, err
			}
		}
		if err := read(size-identityBlock, identityBlock); err != nil {
			return [32]byte{}, err
		}
	}
	var id [32]byte
	h.Sum(id[:0])
	return id, nil
}
