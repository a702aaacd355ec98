package llamacpp

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/mcpd-project/mcpd/native"
)

// BenchmarkStepTokens is one llama_decode of n tokens, one for each of n
// sequences, for n = 1..8, on a context laid out as the engine's (8
// sequences of 2048 positions, non-unified KV cache), the sequences 42
// positions in: what a step costs by its tokens on these cores, the
// scheduler's reason to merge new requests into the running streams' step
// rather than give them a step of their own when they are more
// (firstTokensFirst). Metrics: tN-ms, the mean step of N tokens; rounds
// run the sizes in turn.
func BenchmarkStepTokens(b *testing.B) {
	path, threads := benchModel(b)
	reserveCores(b, threads)
	const seqs, promptLen = 8, 42
	model, err := native.Load(context.Background(), path, native.ModelParams{HugePages: true})
	if err != nil {
		b.Fatal(err)
	}
	defer model.Close()
	seqCtx := 2048
	if tc, err := model.TrainContext(); err == nil && tc > 0 {
		seqCtx = min(seqCtx, tc)
	}
	nctx, err := model.NewContext(native.ContextParams{ContextSize: seqCtx * seqs, BatchSize: 512, Sequences: seqs, Threads: threads})
	if err != nil {
		b.Fatal(err)
	}
	var batch native.Batch
	decode := func() time.Duration {
		t := time.Now()
		if err := nctx.Decode(context.Background(), &batch); err != nil {
			b.Fatal(err)
		}
		return time.Since(t)
	}
	var pos [seqs]int
	start := func() { // every sequence holds the same prompt
		for s := range seqs {
			if err := nctx.ClearSequence(s); err != nil {
				b.Fatal(err)
			}
			batch.Reset()
			for i := range promptLen {
				batch.Add(native.Token(3+i), i, s, i == promptLen-1) // byte tokens: in every vocabulary
			}
			decode()
			pos[s] = promptLen
		}
	}
	start()
	var took [seqs + 1]time.Duration
	var steps [seqs + 1]int
	for b.Loop() {
		for n := 1; n <= seqs; n++ {
			if pos[0]+4 > min(seqCtx, 512) {
				start()
			}
			for range 3 {
				batch.Reset()
				for s := range n {
					batch.Add(native.Token(100+s), pos[s], s, true)
					pos[s]++
				}
				took[n] += decode()
				steps[n]++
			}
		}
	}
	for n := 1; n <= seqs; n++ {
		b.ReportMetric(float64(took[n].Microseconds())/1000/float64(steps[n]), "t"+strconv.Itoa(n)+"-ms")
	}
}
