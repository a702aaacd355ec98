package chatstate

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Load reads the chat file at path, written for identity id. A missing
// file is os.ErrNotExist (errors.Is).
func Load(path string, id [32]byte) ([]Conversation, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return Read(bufio.NewReader(f), fi.Size(), id)
}

// Save writes convs to path for identity id, atomically: a new file,
// synced, renamed over the old one, and the directory synced, so that a
// crash at any moment leaves the old file or the new one whole. No
// conversations: the file is removed. It returns the bytes written.
func Save(path string, id [32]byte, convs []Conversation) (int64, error) {
	if len(convs) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, err
		}
		return 0, nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return 0, err
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".*.tmp") // 0600: it holds chat text
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	bw := bufio.NewWriterSize(tmp, 64<<10)
	err = Write(bw, id, convs)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return 0, fmt.Errorf("chat file: %w", err)
	}
	if d, err := os.Open(dir); err == nil { // the rename itself, on disk
		d.Sync()
		d.Close()
	}
	size := int64(headerSize)
	for _, c := range convs {
		size += c.Size()
	}
	return size, nil
}
