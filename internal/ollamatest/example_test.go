package ollamatest_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/ollama/ollama/api"

	"github.com/mcpd-project/mcpd/internal/ollamatest"
)

// A fake Ollama answers Ollama's own client; FailNext makes the next
// request fail the way a real server does.
func ExampleServer() {
	srv, err := ollamatest.New(ollamatest.Config{Tokens: []string{"Water", " the", " tomatoes."}})
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	u, _ := url.Parse(srv.URL())
	client := api.NewClient(u, http.DefaultClient)
	chat := &api.ChatRequest{Model: "tiny", Messages: []api.Message{{Role: "user", Content: "What first?"}}}

	err = client.Chat(context.Background(), chat, func(r api.ChatResponse) error {
		fmt.Printf("%q done=%v eval_count=%d\n", r.Message.Content, r.Done, r.EvalCount)
		return nil
	})
	fmt.Println("err:", err)

	srv.FailNext(ollamatest.QueueFull)
	err = client.Chat(context.Background(), chat, func(api.ChatResponse) error { return nil })
	var se api.StatusError
	fmt.Println(errors.As(err, &se), se.StatusCode, se.ErrorMessage)

	chat.Model = "llama3.2:1b"
	err = client.Chat(context.Background(), chat, func(api.ChatResponse) error { return nil })
	fmt.Println(err)
	// Output:
	// "Water" done=false eval_count=0
	// " the" done=false eval_count=0
	// " tomatoes." done=false eval_count=0
	// "" done=true eval_count=3
	// err: <nil>
	// true 503 server busy, please try again.  maximum pending requests exceeded
	// 404 Not Found: model "llama3.2:1b" not found, try pulling it first
}
