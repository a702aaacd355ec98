package backends

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"sync"
)

// ResponseCache keeps the answers to deterministic requests — greedy
// (temperature 0 or top-k 1) or with a fixed seed — so that the same
// request again (same engine, model, messages and options) is answered
// with the same bytes without running the model. A sampled request is
// never stored: it would not give the same answer twice. Bounded by a
// byte budget, least recently used first out. Safe for concurrent use.
type ResponseCache struct {
	mu      sync.Mutex
	budget  int64
	shared  *Budget // nil: budget alone bounds it
	bytes   int64
	lru     *list.List // of *cached, most recently used first
	entries map[cacheKey]*list.Element
	stats   CacheStats
}

// CacheStats are a ResponseCache's counters since start and its size now.
type CacheStats struct {
	Hits      int64 `json:"hits"`      // requests answered from the cache
	Misses    int64 `json:"misses"`    // deterministic requests that ran the model
	Skipped   int64 `json:"skipped"`   // sampled requests, never cached
	Evictions int64 `json:"evictions"` // answers dropped for the budget
	Entries   int   `json:"entries"`
	Bytes     int64 `json:"bytes"`  // held now, answers and bookkeeping
	Budget    int64 `json:"budget"` // the most it holds (0: no response cache)
	// KV is the engines' reuse of evaluated prompts (KVReporter).
	KV KVStats `json:"kv"`
}

// KVStats say how much prompt evaluation an engine's KV cache saved.
type KVStats struct {
	PromptTokens int64 `json:"prompt_tokens"` // of the requests admitted
	PromptCached int64 `json:"prompt_cached"` // of those, found in the cache, not evaluated again
	Copies       int64 `json:"copies"`        // prefixes copied from another conversation's cache
	Dropped      int64 `json:"dropped"`       // cached tokens dropped to make room for other prompts
	// Hits are requests that found part of their prompt cached, Misses
	// those that found none; Evictions are conversations' caches dropped
	// for the shared Budget; Bytes is what the caches of conversations
	// between turns hold now; WarmLoaded the tokens loaded from the warm
	// file at start.
	Hits       int64 `json:"hits"`
	Misses     int64 `json:"misses"`
	Evictions  int64 `json:"evictions"`
	Bytes      int64 `json:"bytes"`
	WarmLoaded int64 `json:"warm_loaded"`
	// Engines is how many engines reported these (KVReporter): none, and
	// there is no KV cache to speak of (Ollama keeps its own).
	Engines int `json:"-"`
}

func (s *KVStats) add(o KVStats) {
	s.PromptTokens += o.PromptTokens
	s.PromptCached += o.PromptCached
	s.Copies += o.Copies
	s.Dropped += o.Dropped
	s.Hits += o.Hits
	s.Misses += o.Misses
	s.Evictions += o.Evictions
	s.Bytes += o.Bytes
	s.WarmLoaded += o.WarmLoaded
	s.Engines++
}

// WarmSaver is implemented by engines that save their caches to disk for
// the next start (the in-process engine's warm file): SaveWarm saves them
// now, while serving (a reload).
type WarmSaver interface {
	SaveWarm(ctx context.Context) error
}

// KVReporter is implemented by engines that keep evaluated prompts
// between requests (the in-process engine).
type KVReporter interface {
	KVStats() KVStats
}

// CacheReporter is implemented by the Selector when it has a response
// cache: its counters, for /status and metrics.
type CacheReporter interface {
	CacheStats() CacheStats
}

type cacheKey [sha256.Size]byte

type cached struct {
	key  cacheKey
	text []byte
	res  Result
	size int64
}

// entryOverhead is what an entry costs besides its text: the key, list
// element, map slot and Result, rounded up.
const entryOverhead = 256

// NewResponseCache returns a cache holding at most budget bytes.
func NewResponseCache(budget int64) *ResponseCache {
	return &ResponseCache{budget: max(budget, 0), lru: list.New(), entries: make(map[cacheKey]*list.Element)}
}

// NewSharedResponseCache returns a cache bounded by b, which other caches
// (an engine's KV caches) share: it drops its least recently used answers
// while b is over its limit.
func NewSharedResponseCache(b *Budget) *ResponseCache {
	c := NewResponseCache(b.Limit())
	c.shared = b
	return c
}

// Deterministic reports whether a request with these options gives the
// same answer every time: greedy, or sampled from a fixed seed.
func Deterministic(o Options) bool {
	return (o.TemperatureSet && o.Temperature <= 0) || o.TopK == 1 || o.SeedSet
}

// key identifies a request to engine running model: every field that can
// change the answer, each length-prefixed so that no two requests encode
// alike.
func key(engine, model string, req Request) cacheKey {
	h := sha256.New()
	var buf []byte
	str := func(s string) {
		buf = binary.AppendUvarint(buf, uint64(len(s)))
		buf = append(buf, s...)
	}
	num := func(v uint64) { buf = binary.AppendUvarint(buf, v) }
	flt := func(f float32) { num(uint64(math.Float32bits(f))) }
	flag := func(b bool) {
		if b {
			num(1)
		} else {
			num(0)
		}
	}
	str(engine)
	str(model)
	num(uint64(len(req.Messages)))
	for _, m := range req.Messages {
		str(string(m.Role))
		str(m.Content)
		num(uint64(len(m.Tokens)))
		for _, t := range m.Tokens {
			num(uint64(uint32(t)))
		}
		h.Write(buf)
		buf = buf[:0]
	}
	o := req.Options
	num(uint64(o.MaxTokens))
	flt(o.Temperature)
	flag(o.TemperatureSet)
	num(uint64(o.TopK))
	flt(o.TopP)
	flt(o.MinP)
	flt(o.RepeatPenalty)
	num(uint64(o.Seed))
	flag(o.SeedSet)
	num(uint64(o.ContextSize))
	num(uint64(len(o.Stop)))
	for _, s := range o.Stop {
		str(s)
	}
	str(o.Grammar)
	str(string(o.Schema))
	h.Write(buf)
	var k cacheKey
	h.Sum(k[:0])
	return k
}

// get returns the answer stored under k and marks it used.
func (c *ResponseCache) get(k cacheKey) ([]byte, Result, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[k]
	if !ok {
		c.stats.Misses++
		return nil, Result{}, false
	}
	c.stats.Hits++
	c.lru.MoveToFront(el)
	e := el.Value.(*cached)
	return e.text, e.res, true
}

// put stores an answer, dropping the least recently used ones beyond the
// budget; an answer larger than the whole budget is not stored.
func (c *ResponseCache) put(k cacheKey, text []byte, res Result) {
	size := int64(len(text)) + 4*int64(len(res.Generated)) + entryOverhead
	c.mu.Lock()
	defer c.mu.Unlock()
	if size > c.budget {
		return
	}
	if el, ok := c.entries[k]; ok { // two identical requests ran at once
		c.lru.MoveToFront(el)
		return
	}
	for c.lru.Len() > 0 && (c.bytes+size > c.budget || (c.shared != nil && c.shared.Over(size))) {
		el := c.lru.Back()
		e := el.Value.(*cached)
		c.lru.Remove(el)
		delete(c.entries, e.key)
		c.bytes -= e.size
		c.account(-e.size)
		c.stats.Evictions++
	}
	if c.shared != nil && c.shared.Over(size) {
		return // the other caches hold the budget; they give it back as they drop their own
	}
	c.entries[k] = c.lru.PushFront(&cached{key: k, text: text, res: res, size: size})
	c.bytes += size
	c.account(size)
}

func (c *ResponseCache) account(n int64) {
	if c.shared != nil {
		c.shared.Add(n)
	}
}

// skipped counts a request that could not be cached.
func (c *ResponseCache) skipped() {
	c.mu.Lock()
	c.stats.Skipped++
	c.mu.Unlock()
}

// Stats returns the counters and the size now.
func (c *ResponseCache) Stats() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.stats
	st.Entries, st.Bytes, st.Budget = c.lru.Len(), c.bytes, c.budget
	return st
}
