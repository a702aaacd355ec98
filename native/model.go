package native

/*
#include <stdlib.h>
#include "mcpd_native.h"
*/
import "C"

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"github.com/mcpd-project/mcpd/native/gguf"
)

// ModelParams tune Load.
type ModelParams struct {
	// GPULayers is passed to llama.cpp for builds with a GPU backend; this
	// CPU build ignores it.
	GPULayers int
	// NoMmap reads the file into memory instead of mapping it.
	NoMmap bool
	// HugePages reads the file into memory that asks the kernel for
	// transparent huge pages (implies NoMmap; Linux, where THP is not
	// "never"). Decoding reads every weight per token, and 2 MiB pages
	// spare it most TLB misses: 8–28 % faster than the mapped file on the
	// reference VM, depending on how the page cache holds it (see
	// mcpd_thp.h, docs/native.md). The cost: the weights are anonymous
	// memory the kernel cannot drop and re-read under pressure, and
	// loading reads the whole file up front.
	HugePages bool
}

// Model is a loaded model. It is safe for concurrent use.
type Model struct {
	mu       sync.RWMutex
	ptr      *C.struct_llama_model
	vocab    *C.struct_llama_vocab
	info     *gguf.Info
	path     string
	nVocab   int
	contexts map[*Context]struct{}
	huge     int64 // bytes of weights given MADV_HUGEPAGE
}

// Load validates the GGUF file at path in Go, then loads it with llama.cpp.
// A file that fails validation never reaches C.
func Load(ctx context.Context, path string, p ModelParams) (*Model, error) {
	if err := CheckCPU(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Validate the open file, and on Linux let llama.cpp open that same
	// file through /proc/self/fd: a file swapped or rewritten after
	// validation never reaches C.
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrModel, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrModel, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrModel, path)
	}
	info, err := gguf.Validate(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrModel, path, err)
	}
	loadPath := path
	if runtime.GOOS == "linux" {
		if p := fmt.Sprintf("/proc/self/fd/%d", f.Fd()); fileExists(p) {
			loadPath = p
		}
	}
	setup()
	cpath := C.CString(loadPath)
	defer C.free(unsafe.Pointer(cpath))
	var hugeMin, huge C.size_t
	if p.HugePages {
		// The weights' buffer holds every tensor; 90 % of them tells it
		// from anything else llama.cpp allocates while loading.
		for _, t := range info.Tensors {
			hugeMin += C.size_t(t.Size)
		}
		hugeMin = max(hugeMin/10*9, 1)
	}
	ptr := C.mcpd_load_model(cpath, C.int32_t(p.GPULayers), C.bool(!p.NoMmap && !p.HugePages), hugeMin, &huge)
	if ptr == nil {
		return nil, fmt.Errorf("%w: %s: llama.cpp rejected it (details at debug log level)", ErrModel, path)
	}
	m := &Model{ptr: ptr, vocab: C.llama_model_get_vocab(ptr), info: info, path: path,
		contexts: make(map[*Context]struct{}), huge: int64(huge)}
	m.nVocab = int(C.llama_vocab_n_tokens(m.vocab))
	if err := ctx.Err(); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// Close frees the model and every Context still open on it.
func (m *Model) Close() error {
	m.mu.Lock()
	if m.ptr == nil {
		m.mu.Unlock()
		return fmt.Errorf("model: %w", ErrClosed)
	}
	kids := make([]*Context, 0, len(m.contexts))
	for c := range m.contexts {
		kids = append(kids, c)
	}
	m.contexts = nil
	ptr := m.ptr
	m.ptr, m.vocab = nil, nil
	m.mu.Unlock()
	// Contexts hold pointers into the model: free them first.
	for _, c := range kids {
		c.free()
	}
	C.llama_model_free(ptr)
	return nil
}

// read runs fn with the model locked for reading, or returns ErrClosed.
func (m *Model) read(fn func() error) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.ptr == nil {
		return fmt.Errorf("model: %w", ErrClosed)
	}
	return fn()
}

// Info is the validated GGUF metadata. It is plain Go data, so it stays
// valid after Close.
func (m *Model) Info() *gguf.Info { return m.info }

// HugePageBytes is how much of the weights' memory asked the kernel for
// transparent huge pages at Load (ModelParams.HugePages); 0 when mapped,
// or when the buffer was not found (not Linux). The kernel may still give
// 4 KiB pages (THP "never", no free 2 MiB pages): AnonHugePages in
// /proc/PID/smaps_rollup says what it did.
func (m *Model) HugePageBytes() int64 { return m.huge }

// LlamaModel is the llama_model behind m, for C code that must run on the
// very same weights (the reference harness, native/harness.OpenModel). It
// stays valid until Close; do not free it.
func (m *Model) LlamaModel() unsafe.Pointer {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return unsafe.Pointer(m.ptr)
}

// Path is the file the model was loaded from.
func (m *Model) Path() string { return m.path }

// VocabSize is the number of tokens.
func (m *Model) VocabSize() int { return m.nVocab }

// Desc is llama.cpp's one-line description ("llama ?B Q8_0").
func (m *Model) Desc() (string, error) {
	var s string
	err := m.read(func() error {
		buf := make([]byte, 256)
		n := C.llama_model_desc(m.ptr, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)))
		if n > 0 {
			s = string(buf[:min(int(n), len(buf)-1)])
		}
		return nil
	})
	return s, err
}

// Params is the parameter count.
func (m *Model) Params() (int64, error) {
	var n int64
	err := m.read(func() error { n = int64(C.llama_model_n_params(m.ptr)); return nil })
	return n, err
}

// TrainContext is the context length the model was trained with.
func (m *Model) TrainContext() (int, error) {
	var n int
	err := m.read(func() error { n = int(C.llama_model_n_ctx_train(m.ptr)); return nil })
	return n, err
}

// ChatTemplate is the GGUF's tokenizer.chat_template, or "".
func (m *Model) ChatTemplate() (string, error) {
	var s string
	err := m.read(func() error {
		if p := C.llama_model_chat_template(m.ptr, nil); p != nil {
			s = C.GoString(p)
		}
		return nil
	})
	return s, err
}

// Special tokens.
type Special struct {
	BOS, EOS   Token // -1 when absent
	AddBOS     bool  // whether the tokenizer adds BOS
	AddEOS     bool
	VocabCount int
}

// Special returns the model's special tokens.
func (m *Model) Special() (Special, error) {
	var s Special
	err := m.read(func() error {
		s = Special{BOS: Token(C.llama_vocab_bos(m.vocab)), EOS: Token(C.llama_vocab_eos(m.vocab)),
			AddBOS: bool(C.llama_vocab_get_add_bos(m.vocab)), AddEOS: bool(C.llama_vocab_get_add_eos(m.vocab)),
			VocabCount: m.nVocab}
		return nil
	})
	return s, err
}

// IsEOG reports whether t ends generation (EOS, EOT and the like).
func (m *Model) IsEOG(t Token) (bool, error) {
	var eog bool
	err := m.read(func() error {
		if t < 0 || int(t) >= m.nVocab {
			return fmt.Errorf("%w: token %d", ErrInvalid, t)
		}
		eog = bool(C.llama_vocab_is_eog(m.vocab, C.llama_token(t)))
		return nil
	})
	return eog, err
}

// Tokenize converts text to tokens. addSpecial adds BOS/EOS as the model
// is configured to; parseSpecial lets text like "</s>" become control
// tokens, which must stay off for text a device sent.
func (m *Model) Tokenize(text string, addSpecial, parseSpecial bool) ([]Token, error) {
	var out []Token
	err := m.read(func() error {
		if len(text) > 1<<30 {
			return fmt.Errorf("%w: text of %d bytes", ErrInvalid, len(text))
		}
		ctext := C.CString(text)
		defer C.free(unsafe.Pointer(ctext))
		// SentencePiece-style vocabularies never give more tokens than
		// bytes, plus BOS/EOS and a leading space marker.
		buf := make([]Token, len(text)+4)
		for range 2 { // at most one retry with the size llama.cpp asked for
			n := C.llama_tokenize(m.vocab, ctext, C.int32_t(len(text)),
				(*C.llama_token)(unsafe.Pointer(&buf[0])), C.int32_t(len(buf)), C.bool(addSpecial), C.bool(parseSpecial))
			if n >= 0 {
				out = buf[:n]
				return nil
			}
			if n == C.INT32_MIN {
				return fmt.Errorf("%w: text too long to tokenize", ErrInvalid)
			}
			buf = make([]Token, -n)
		}
		return fmt.Errorf("%w: tokenizer did not converge", ErrInvalid)
	})
	return out, err
}

// TokenPiece is the bytes of one token. A byte token gives one byte of a
// possibly multi-byte UTF-8 character: callers assembling text must buffer
// incomplete characters. special renders control tokens ("</s>").
func (m *Model) TokenPiece(t Token, special bool) ([]byte, error) {
	var out []byte
	err := m.read(func() error {
		if t < 0 || int(t) >= m.nVocab {
			return fmt.Errorf("%w: token %d", ErrInvalid, t)
		}
		buf := make([]byte, 64)
		for range 2 {
			n := C.llama_token_to_piece(m.vocab, C.llama_token(t), (*C.char)(unsafe.Pointer(&buf[0])), C.int32_t(len(buf)), 0, C.bool(special))
			if n >= 0 {
				out = buf[:n]
				return nil
			}
			buf = make([]byte, -n)
		}
		return fmt.Errorf("%w: token %d piece", ErrInvalid, t)
	})
	return out, err
}

// Detokenize joins tokens into text the way llama.cpp does (it drops the
// leading space a SentencePiece tokenizer adds).
func (m *Model) Detokenize(tokens []Token, removeSpecial, unparseSpecial bool) (string, error) {
	var out string
	err := m.read(func() error {
		if len(tokens) == 0 {
			return nil
		}
		for _, t := range tokens {
			if t < 0 || int(t) >= m.nVocab {
				return fmt.Errorf("%w: token %d", ErrInvalid, t)
			}
		}
		buf := make([]byte, len(tokens)*8+16)
		for range 2 {
			n := C.llama_detokenize(m.vocab, (*C.llama_token)(unsafe.Pointer(&tokens[0])), C.int32_t(len(tokens)),
				(*C.char)(unsafe.Pointer(&buf[0])), C.int32_t(len(buf)), C.bool(removeSpecial), C.bool(unparseSpecial))
			if n >= 0 {
				out = string(buf[:n])
				return nil
			}
			buf = make([]byte, -n)
		}
		return fmt.Errorf("%w: detokenize", ErrInvalid)
	})
	return out, err
}

// ChatMessage is one turn for ApplyTemplate.
type ChatMessage struct {
	Role, Content string
}

// ApplyTemplate formats msgs with a chat template, ending with the cue for
// the assistant's turn. llama.cpp recognises well-known templates (ChatML,
// Llama 2/3, Mistral, Gemma, ...) by their text without running Jinja;
// an unrecognised template gives an error, and callers fall back to a plain
// format. tmpl "" means the model's own template.
func (m *Model) ApplyTemplate(tmpl string, msgs []ChatMessage) (string, error) {
	var out string
	err := m.read(func() error {
		if tmpl == "" {
			p := C.llama_model_chat_template(m.ptr, nil)
			if p == nil {
				return fmt.Errorf("%w: model has no chat template", ErrInvalid)
			}
			tmpl = C.GoString(p)
		}
		ctmpl := C.CString(tmpl)
		defer C.free(unsafe.Pointer(ctmpl))
		if len(msgs) == 0 {
			return fmt.Errorf("%w: no messages", ErrInvalid)
		}
		// C strings in Go memory: allowed, the slice holds no Go pointers.
		cmsgs := make([]C.struct_llama_chat_message, len(msgs))
		total := 0
		for i, msg := range msgs {
			cmsgs[i].role = C.CString(msg.Role)
			cmsgs[i].content = C.CString(msg.Content)
			total += len(msg.Role) + len(msg.Content)
		}
		defer func() {
			for _, cm := range cmsgs {
				C.free(unsafe.Pointer(cm.role))
				C.free(unsafe.Pointer(cm.content))
			}
		}()
		buf := make([]byte, 2*total+256)
		for range 2 {
			n := C.llama_chat_apply_template(ctmpl, &cmsgs[0], C.size_t(len(cmsgs)), C.bool(true),
				(*C.char)(unsafe.Pointer(&buf[0])), C.int32_t(len(buf)))
			if n < 0 {
				return fmt.Errorf("%w: chat template not recognised by llama.cpp", ErrInvalid)
			}
			if int(n) <= len(buf) {
				out = string(buf[:n])
				return nil
			}
			buf = make([]byte, n)
		}
		return fmt.Errorf("%w: chat template output did not fit", ErrInvalid)
	})
	return out, err
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
