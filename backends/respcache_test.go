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
