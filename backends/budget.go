package backends

import "sync/atomic"

// Budget is one memory bound shared by the caches (docs/caching.md): the
// response cache's answers and the KV caches an in-process engine keeps
// for conversations between their turns. Each cache accounts its bytes
// here and, while the sum is over the limit, drops its own least recently
// used entries — so one figure bounds all of it, whichever cache is busy.
// Safe for concurrent use.
type Budget struct {
	limit int64
	used  atomic.Int64
}

// NewBudget returns a budget of limit bytes.
func NewBudget(limit int64) *Budget { return &Budget{limit: max(limit, 0)} }

// Limit is the bound in bytes.
func (b *Budget) Limit() int64 { return b.limit }

// Used is what the caches hold now.
func (b *Budget) Used() int64 { return b.used.Load() }

// Add accounts n more bytes (negative: released).
func (b *Budget) Add(n int64) { b.used.Add(n) }

// Over says whether holding extra bytes more would exceed the limit.
func (b *Budget) Over(extra int64) bool { return b.used.Load()+extra > b.limit }
