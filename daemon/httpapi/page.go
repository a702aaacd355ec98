package httpapi

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"sync"
	"time"
)

// The status page at GET /: server-rendered HTML from the binary (no
// script, no CDN, refreshed by the browser every 5 s): state, backend and
// model, load, links and their state, devices, and tokens/s over the last
// minutes as an inline SVG chart.

//go:embed page.html
var pageHTML string

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"since": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return time.Since(t).Round(time.Second).String() + " ago"
	},
}).Parse(pageHTML))

// Chart sampling: one point every sampleEvery, kept for historyLen points.
const (
	sampleEvery = 10 * time.Second
	historyLen  = 60 // ten minutes
)

// tokenHistory is the tokens/s chart's data: the daemon's token total at
// moments at least sampleEvery apart.
type tokenHistory struct {
	mu     sync.Mutex
	points []tokenPoint
}

type tokenPoint struct {
	at     time.Time
	tokens int64
}

// add records total at now unless the last point is younger than every.
func (h *tokenHistory) add(now time.Time, total int64, every time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if n := len(h.points); n > 0 && now.Sub(h.points[n-1].at) < every {
		return
	}
	h.points = append(h.points, tokenPoint{now, total})
	if len(h.points) > historyLen+1 {
		h.points = h.points[len(h.points)-historyLen-1:]
	}
}

// rates is tokens/s between consecutive points.
func (h *tokenHistory) rates() []float64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []float64
	for i := 1; i < len(h.points); i++ {
		dt := h.points[i].at.Sub(h.points[i-1].at).Seconds()
		if dt > 0 {
			out = append(out, float64(max(h.points[i].tokens-h.points[i-1].tokens, 0))/dt)
		}
	}
	return out
}

// chartSVG draws rates as bars, newest on the right, with the peak marked.
func chartSVG(rates []float64) template.HTML {
	const w, h, pad = 720, 140, 28
	if len(rates) == 0 {
		return `<p class="muted" id="chart">No samples yet: the chart fills in as the page is open (a point every 10 s).</p>`
	}
	peak := 1.0
	for _, r := range rates {
		peak = max(peak, r)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg id="chart" width="100%%" viewBox="0 0 %d %d" role="img" aria-label="tokens per second">`, w, h+pad)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#d0d5dd"/>`, pad, h, w, h)
	slot := float64(w-pad) / historyLen
	for i, r := range rates {
		bh := r / peak * float64(h-10)
		x := float64(w) - float64(len(rates)-i)*slot
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#3b6fd8"><title>%.1f tokens/s</title></rect>`,
			x+1, float64(h)-bh, max(slot-2, 1), bh, r)
	}
	fmt.Fprintf(&b, `<text x="0" y="12">%.0f</text><text x="0" y="%d">0</text>`, peak, h)
	fmt.Fprintf(&b, `<text x="%d" y="%d">%d min ago</text><text x="%d" y="%d" text-anchor="end">now</text>`,
		pad, h+18, int(historyLen*sampleEvery/time.Minute), w, h+18)
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) // built here from numbers only
}

// page renders the status page.
func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	snap := s.cfg.Daemon.Snapshot(r.Context())
	s.history.add(time.Now(), snap.TokensGenerated, sampleEvery)
	rates := s.history.rates()
	data := struct {
		Snap    any
		Version string
		Uptime  string
		Chosen  string
		TPSNow  float64
		Window  string
		Chart   template.HTML
	}{
		Snap: snap, Version: s.cfg.Version, Uptime: time.Since(s.start).Round(time.Second).String(),
		Window: (historyLen * sampleEvery).String(), Chart: chartSVG(rates),
	}
	if len(rates) > 0 {
		data.TPSNow = rates[len(rates)-1]
	}
	if s.cfg.Backend != nil {
		if b := s.cfg.Backend(); b.Reason != "" {
			data.Chosen = b.Reason
		}
	}
	var buf bytes.Buffer
	if err := pageTmpl.Execute(&buf, data); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	// Nothing is loaded from anywhere: the page is its own style, no script.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("Cache-Control", "no-store")
	_, _ = w.Write(buf.Bytes())
}

// sampleTokens adds a chart point every sampleEvery while the server runs,
// so the chart has data when the page is opened.
func (s *Server) sampleTokens(ctx context.Context, stop <-chan struct{}) {
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			s.history.add(now, s.cfg.Daemon.Snapshot(ctx).TokensGenerated, sampleEvery)
		}
	}
}
