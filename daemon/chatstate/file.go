package chatstate

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/mcpd-project/mcpd/internal/atomicfile"
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

// Save writes convs to path for identity id, atomically (a new file,
// synced, renamed over the old one, the directory synced: a crash at any
// moment leaves the old file or the new one whole). No
// conversations: the file is removed. It returns the bytes written.
func Save(path string, id [32]byte, convs []Conversation) (int64, error) {
	if len(convs) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, err
		}
		return 0, nil
	}
	if err := atomicfile.Write(path, func(w io.Writer) error { return Write(w, id, convs) }); err != nil {
		return 0, fmt.Errorf("chat file: %w", err)
	}
	size := int64(headerSize)
	for _, c := range convs {
		size += c.Size()
	}
	return size, nil
}
