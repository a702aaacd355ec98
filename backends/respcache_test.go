package backends

import (
	"reflect"
	"testing"
)

// Every field of a request is part of the response cache's key: changing
// any one of them (each Options field by reflection, so that a field added
// later is covered or fails here) gives another key.
func TestCacheKeyCoversEveryField(t *testing.T) {
	base := Request{Model: "m", Messages: []Message{{Role: RoleUser, Content: "hi"}}}
	k0 := key("llama.cpp", "m", base)
	variants := map[string]Request{}
	opts := reflect.TypeOf(Options{})
	for i := range opts.NumField() {
		r := base
		f := reflect.ValueOf(&r.Options).Elem().Field(i)
		switch f.Kind() {
		case reflect.Int:
			f.SetInt(7)
		case reflect.Uint32:
			f.SetUint(7)
		case reflect.Float32:
			f.SetFloat(0.5)
		case reflect.Bool:
			f.SetBool(true)
		case reflect.String:
			f.SetString("root ::= \"x\"")
		case reflect.Slice:
			if f.Type().Elem().Kind() == reflect.String {
				f.Set(reflect.ValueOf([]string{"zz"}))
			} else {
				f.SetBytes([]byte(`{"type":"object"}`))
			}
		default:
			t.Fatalf("Options.%s: a %s, which this test cannot vary", opts.Field(i).Name, f.Kind())
		}
		variants["Options."+opts.Field(i).Name] = r
	}
	variants["another message"] = Request{Model: "m", Messages: []Message{{Role: RoleUser, Content: "ho"}}}
	variants["another role"] = Request{Model: "m", Messages: []Message{{Role: RoleSystem, Content: "hi"}}}
	variants["an answer's tokens"] = Request{Model: "m", Messages: []Message{{Role: RoleUser, Content: "hi", Tokens: []int32{7}}}}
	variants["other tokens"] = Request{Model: "m", Messages: []Message{{Role: RoleUser, Content: "hi", Tokens: []int32{7, 8}}}}
	variants["split differently"] = Request{Model: "m", Messages: []Message{{Role: RoleUser, Content: "h"}, {Role: RoleUser, Content: "i"}}}
	seen := map[cacheKey]string{k0: "base"}
	for name, r := range variants {
		k := key("llama.cpp", "m", r)
		if other, ok := seen[k]; ok {
			t.Errorf("%s: same key as %s", name, other)
		}
		seen[k] = name
	}
	if key("ollama", "m", base) == k0 || key("llama.cpp", "n", base) == k0 {
		t.Error("engine or model not in the key")
	}
	if key("llama.cpp", "m", base) != k0 {
		t.Error("the same request gave another key")
	}
}

// TestSharedBudget: a response cache sharing its budget drops its least
// recently used answers while the other caches' bytes put the sum over
// the limit, stores nothing they leave no room for, and accounts what it
// holds in the budget.
func TestSharedBudget(t *testing.T) {
	b := NewBudget(4 * entryOverhead)
	c := NewSharedResponseCache(b)
	k := func(i int) cacheKey { return cacheKey{byte(i)} }
	c.put(k(1), nil, Result{})
	c.put(k(2), nil, Result{})
	if b.Used() != 2*entryOverhead || c.Stats().Budget != b.Limit() {
		t.Fatalf("budget used %d, stats %+v", b.Used(), c.Stats())
	}
	b.Add(2 * entryOverhead) // an engine's KV caches take half
	c.put(k(3), nil, Result{})
	if _, _, ok := c.get(k(1)); ok {
		t.Fatal("the least recently used answer stayed over the shared budget")
	}
	if st := c.Stats(); st.Entries != 2 || st.Evictions != 1 || b.Used() != 4*entryOverhead {
		t.Fatalf("stats %+v, budget used %d", st, b.Used())
	}
	b.Add(10 * entryOverhead) // the engine takes all of it and more
	c.put(k(4), nil, Result{})
	if st := c.Stats(); st.Entries != 0 || b.Used() != 12*entryOverhead {
		t.Fatalf("with the budget taken: stats %+v, budget used %d", st, b.Used())
	}
}
