package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// writeMarkdown renders the report as a markdown section; pngPath, when
// set, is linked (relative to the markdown file's folder when both share it).
func writeMarkdown(w io.Writer, rep benchReport, pngPath string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "### mcpctl bench — %s\n\n", rep.Started.Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "Target: %s. Prompt %q, MAX_TOKENS %d, %d warm-up request(s) per device.\n\n", rep.Target, rep.Prompt, rep.MaxTokens, rep.Warmup)
	b.WriteString("| scenario | devices | link | requests | errors | tokens/s | TTFT p50 | p95 | p99 | latency p50 | p95 | p99 |\n")
	b.WriteString("|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range rep.Scenarios {
		link := s.Transport
		if s.Baud > 0 {
			link = fmt.Sprintf("%s %d baud", s.Transport, s.Baud)
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %d | %s | %.1f | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.1f ms |\n",
			s.Name, s.Devices, link, s.Requests, errorList(s.Errors), s.TokensPerSec,
			s.TTFTp50, s.TTFTp95, s.TTFTp99, s.Latencyp50, s.Latencyp95, s.Latencyp99)
	}
	for _, s := range rep.Scenarios {
		if one, ok := singleOf(rep, s); ok && one.TokensPerSec > 0 && one.TTFTp50 > 0 {
			fmt.Fprintf(&b, "\n%s (%d devices) ÷ %s, same run: aggregate tokens/s **%.2f×**, TTFT p99 ÷ single p50 **%.2f×**.\n",
				s.Name, s.Devices, one.Name, s.TokensPerSec/one.TokensPerSec, s.TTFTp99/one.TTFTp50)
		}
	}
	for _, s := range rep.Scenarios {
		if len(s.TurnTTFTp50) > 0 {
			fmt.Fprintf(&b, "\n%s: time to first token by turn (p50)", s.Name)
			for i, v := range s.TurnTTFTp50 {
				fmt.Fprintf(&b, "; %d: %.1f ms", i+1, v)
			}
			fmt.Fprintf(&b, ". Turn %d ÷ turn 1: **%.2f**.\n", len(s.TurnTTFTp50), s.LastOverFirst)
		}
	}
	if pngPath != "" {
		fmt.Fprintf(&b, "\n![request latency histogram](%s)\n", filepath.Base(pngPath))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// singleOf finds the one-device scenario of the same link as the
// many-device scenario s ("single" for "udp", "mqtt-single" for "mqtt").
func singleOf(rep benchReport, s scenarioReport) (scenarioReport, bool) {
	name := map[string]string{"udp": "single", "mqtt": "mqtt-single"}[s.Name]
	if name == "" || s.Devices < 2 {
		return scenarioReport{}, false
	}
	for _, o := range rep.Scenarios {
		if o.Name == name {
			return o, true
		}
	}
	return scenarioReport{}, false
}

func errorList(m map[string]int) string {
	if len(m) == 0 {
		return "0"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// Histogram layout, in pixels.
const (
	histWidth  = 720
	panelH     = 200
	marginL    = 60
	marginR    = 20
	marginTop  = 28
	marginBot  = 36
	histBins   = 40
	glyphWidth = 7 // basicfont.Face7x13
)

var (
	histBg   = color.RGBA{255, 255, 255, 255}
	histAxis = color.RGBA{60, 60, 60, 255}
	histText = color.RGBA{20, 20, 20, 255}
	histBars = []color.RGBA{{52, 101, 164, 255}, {204, 102, 0, 255}, {78, 154, 6, 255}, {117, 80, 123, 255}}
	histP    = color.RGBA{200, 0, 0, 255}
)

// writeHistogram draws one panel per scenario: request latencies in
// histBins bins on a linear axis from 0 to the largest latency, with the
// p50/p95/p99 marked. Pure Go: image/png and a bitmap font.
func writeHistogram(w io.Writer, rep benchReport) error {
	n := max(len(rep.Scenarios), 1)
	img := image.NewRGBA(image.Rect(0, 0, histWidth, n*(panelH+marginTop+marginBot)))
	draw.Draw(img, img.Bounds(), &image.Uniform{histBg}, image.Point{}, draw.Src)
	for i, s := range rep.Scenarios {
		top := i * (panelH + marginTop + marginBot)
		drawPanel(img, top, s, histBars[i%len(histBars)])
	}
	return png.Encode(w, img)
}

func drawPanel(img *image.RGBA, top int, s scenarioReport, bar color.RGBA) {
	x0, x1 := marginL, histWidth-marginR
	y0, y1 := top+marginTop, top+marginTop+panelH // plot area, y1 = baseline
	title := fmt.Sprintf("%s: %s over %s, %s - latency (ms)", s.Name, plural(s.Devices, "device", "devices"), s.Transport, plural(s.Requests, "request", "requests"))
	label(img, x0, top+16, title)
	hline(img, x0, x1, y1, histAxis)
	vline(img, x0, y0, y1, histAxis)
	if len(s.Latencies) == 0 {
		label(img, x0+10, y0+panelH/2, "no completed requests")
		return
	}
	hi := slices.Max(s.Latencies) * 1.02
	if hi <= 0 {
		hi = 1
	}
	counts := make([]int, histBins)
	for _, v := range s.Latencies {
		counts[min(histBins-1, int(v/hi*histBins))]++
	}
	peak := slices.Max(counts)
	binW := float64(x1-x0) / histBins
	for i, c := range counts {
		if c == 0 {
			continue
		}
		h := int(math.Round(float64(c) / float64(peak) * float64(panelH-4)))
		bx := x0 + int(float64(i)*binW) + 1
		fill(img, bx, y1-h, bx+max(int(binW)-1, 1), y1, bar)
	}
	xOf := func(v float64) int { return x0 + int(v/hi*float64(x1-x0)) }
	names := []string{"p50", "p95", "p99"}
	xs := []int{xOf(s.Latencyp50), xOf(s.Latencyp95), xOf(s.Latencyp99)}
	for i, pos := range markerLabels(xs, names, y0+12) {
		vline(img, xs[i], y0, y1, histP)
		label(img, pos.X, pos.Y, names[i])
	}
	// Axis: 0, the middle, the end; the peak count on the left.
	for _, v := range []float64{0, hi / 2, hi} {
		t := fmt.Sprintf("%.0f", v)
		label(img, xOf(v)-len(t)*glyphWidth/2, y1+16, t)
	}
	label(img, 4, y0+10, fmt.Sprintf("%d", peak))
	label(img, 4, y1, "0")
}

func label(img *image.RGBA, x, y int, s string) {
	d := font.Drawer{Dst: img, Src: &image.Uniform{histText}, Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func fill(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA) {
	draw.Draw(img, image.Rect(x0, y0, x1, y1), &image.Uniform{c}, image.Point{}, draw.Src)
}

func hline(img *image.RGBA, x0, x1, y int, c color.RGBA) { fill(img, x0, y, x1, y+1, c) }
func vline(img *image.RGBA, x, y0, y1 int, c color.RGBA) { fill(img, x, y0, x+1, y1, c) }

// markerLabels places the percentile markers' names beside their lines,
// each a line lower than the one before when it would overlap it (p95 and
// p99 are often a few pixels apart).
func markerLabels(xs []int, names []string, y int) []image.Point {
	const lineH = 14
	out := make([]image.Point, len(xs))
	var placed []image.Rectangle
	for i, x := range xs {
		r := image.Rect(x+2, y-lineH+2, x+2+len(names[i])*glyphWidth, y+2)
		for _, p := range placed {
			if r.Overlaps(p) {
				r = r.Add(image.Pt(0, lineH))
			}
		}
		placed = append(placed, r)
		out[i] = image.Pt(r.Min.X, r.Max.Y-2)
	}
	return out
}
