package soakbench

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"time"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Chart geometry: one panel per part, two columns.
const (
	panelW, panelH = 600, 250
	chartCols      = 2
	legendH        = 30
	marginL        = 60 // room for the y labels
	marginR        = 52 // room for the RSS axis labels
	marginT        = 22 // room for the panel title
	marginB        = 30 // room for the x labels
)

var (
	colHeap  = color.RGBA{0x1f, 0x5f, 0xbf, 0xff}
	colRSS   = color.RGBA{0xd0, 0x30, 0x30, 0xff}
	colLive  = color.RGBA{0x10, 0x90, 0x40, 0xff}
	colLoad  = color.RGBA{0xff, 0xeb, 0xcc, 0xff}
	colDrain = color.RGBA{0xdd, 0xea, 0xfb, 0xff}
	colWarm  = color.RGBA{0xee, 0xee, 0xee, 0xff}
	colGrid  = color.RGBA{0xd8, 0xd8, 0xd8, 0xff}
	colAxis  = color.RGBA{0x40, 0x40, 0x40, 0xff}
	colText  = color.RGBA{0x10, 0x10, 0x10, 0xff}
)

// WritePNG draws the report: per part, its Go heap (in use, and the live
// estimate) and RSS over time, with the warm-up, the load and the drain
// shaded and the verdict's threshold (start live heap plus the tolerance)
// dashed.
func WritePNG(w io.Writer, r Report) error {
	var order []string
	by := map[string][]Sample{}
	for _, s := range r.Samples {
		if _, ok := by[s.Part]; !ok {
			order = append(order, s.Part)
		}
		by[s.Part] = append(by[s.Part], s)
	}
	if len(order) == 0 {
		return fmt.Errorf("chart: no samples")
	}
	rows := (len(order) + chartCols - 1) / chartCols
	img := image.NewRGBA(image.Rect(0, 0, chartCols*panelW, legendH+rows*panelH))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	end := r.End
	if end <= 0 {
		end = r.Samples[len(r.Samples)-1].At
	}
	end = max(end, time.Second)

	// Legend.
	x := 10
	for _, l := range []struct {
		c    color.Color
		text string
	}{{colHeap, "heap_alloc"}, {colLive, "live heap (GC goal/2)"}, {colRSS, "RSS"}, {colWarm, "warm-up"}, {colLoad, "load"}, {colDrain, "drain"}} {
		fill(img, image.Rect(x, 10, x+14, 24), l.c)
		x = label(img, x+20, 22, l.text) + 24
	}
	if r.ChatsStarted > 0 {
		label(img, x+10, 22, fmt.Sprintf("%d chats, %d messages", r.ChatsStarted, r.Messages))
	}

	for i, part := range order {
		ox, oy := (i%chartCols)*panelW, legendH+(i/chartCols)*panelH
		plot := image.Rect(ox+marginL, oy+marginT, ox+panelW-marginR, oy+panelH-marginB)
		ss := by[part]
		// Heap figures on the left axis, RSS on its own right axis: RSS is
		// ten times the heap and would flatten it.
		var topHeap, topRSS int64
		for _, s := range ss {
			topHeap = max(topHeap, s.Heap, s.Live)
			topRSS = max(topRSS, s.RSS)
		}
		yMax := niceCeil(float64(topHeap) / 1e6 * 1.05)
		yMaxRSS := niceCeil(float64(topRSS) / 1e6 * 1.05)
		xOf := func(t time.Duration) int {
			return plot.Min.X + int(float64(plot.Dx())*t.Seconds()/end.Seconds())
		}
		yOf := func(v float64) int { return plot.Max.Y - int(float64(plot.Dy())*v/yMax) }
		yOfRSS := func(v float64) int { return plot.Max.Y - int(float64(plot.Dy())*v/yMaxRSS) }

		// Phases.
		if r.IdleStart > 0 {
			fill(img, image.Rect(plot.Min.X, plot.Min.Y, xOf(r.IdleStart), plot.Max.Y), colWarm)
		}
		if r.LoadStart > 0 {
			fill(img, image.Rect(xOf(r.LoadStart), plot.Min.Y, xOf(r.DrainStart), plot.Max.Y), colLoad)
		}
		if r.DrainStart > 0 {
			fill(img, image.Rect(xOf(r.DrainStart), plot.Min.Y, xOf(end), plot.Max.Y), colDrain)
		}
		// Grid and labels.
		step := yMax / 4
		for k := 0; k <= 4; k++ {
			y := yOf(step * float64(k))
			hline(img, plot.Min.X, plot.Max.X, y, colGrid)
			labelColor(img, ox+4, y+4, fmt.Sprintf("%5.1f", step*float64(k)), colHeap)
			labelColor(img, plot.Max.X+4, y+4, fmt.Sprintf("%.0f", yMaxRSS/4*float64(k)), colRSS)
		}
		xs := niceTimeStep(end)
		for t := time.Duration(0); t <= end; t += xs {
			xx := xOf(t)
			vline(img, xx, plot.Max.Y, plot.Max.Y+4, colAxis)
			label(img, xx-8, plot.Max.Y+16, fmtDur(t))
		}
		// The verdict's threshold: start live heap plus the tolerance, dashed.
		for _, ps := range r.Parts {
			if ps.Part != part || ps.StartLive <= 0 {
				continue
			}
			y := yOf(float64(ps.StartLive) * (1 + r.Options.Tolerance) / 1e6)
			for x := plot.Min.X; x < plot.Max.X; x += 8 {
				hline(img, x, min(x+3, plot.Max.X), y, colLive)
			}
			label(img, plot.Max.X-150, y-3, fmt.Sprintf("start live +%.0f%%", r.Options.Tolerance*100))
		}
		hline(img, plot.Min.X, plot.Max.X, plot.Max.Y, colAxis)
		vline(img, plot.Min.X, plot.Min.Y, plot.Max.Y, colAxis)
		label(img, ox+marginL, oy+16, part+"  (MB: heap left, RSS right)")

		// Series.
		series := func(get func(Sample) int64, yOf func(float64) int, c color.Color) {
			havePrev := false
			var px, py int
			for _, s := range ss {
				v := get(s)
				if v < 0 {
					havePrev = false
					continue
				}
				x, y := xOf(s.At), yOf(float64(v)/1e6)
				if havePrev {
					line(img, px, py, x, y, c)
				}
				px, py, havePrev = x, y, true
			}
		}
		series(func(s Sample) int64 { return s.RSS }, yOfRSS, colRSS)
		series(func(s Sample) int64 { return s.Heap }, yOf, colHeap)
		series(func(s Sample) int64 { return s.Live }, yOf, colLive)
	}
	if err := png.Encode(w, img); err != nil {
		return fmt.Errorf("encode png: %w", err)
	}
	return nil
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten (at least 1).
func niceCeil(v float64) float64 {
	if v <= 1 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// niceTimeStep returns a tick step giving about 6 to 12 ticks over end.
func niceTimeStep(end time.Duration) time.Duration {
	for _, s := range []time.Duration{5 * time.Second, 10 * time.Second, 15 * time.Second, 30 * time.Second,
		time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 15 * time.Minute, 30 * time.Minute, time.Hour} {
		if end/s <= 10 {
			return s
		}
	}
	return 2 * time.Hour
}

// fmtDur renders a tick: 30s, 2m, 1m30s.
func fmtDur(d time.Duration) string {
	if d < time.Minute {
		return fmt.Sprintf("%ds", int(d.Seconds()))
	}
	if d%time.Minute == 0 {
		return fmt.Sprintf("%dm", int(d.Minutes()))
	}
	return fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
}

func fill(img *image.RGBA, r image.Rectangle, c color.Color) {
	draw.Draw(img, r, image.NewUniform(c), image.Point{}, draw.Src)
}

func hline(img *image.RGBA, x0, x1, y int, c color.Color) {
	for x := x0; x <= x1; x++ {
		img.Set(x, y, c)
	}
}

func vline(img *image.RGBA, x, y0, y1 int, c color.Color) {
	for y := y0; y <= y1; y++ {
		img.Set(x, y, c)
	}
}

// line draws a two-pixel-thick segment.
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.Color) {
	n := max(abs(x1-x0), abs(y1-y0), 1)
	for i := 0; i <= n; i++ {
		x := x0 + (x1-x0)*i/n
		y := y0 + (y1-y0)*i/n
		img.Set(x, y, c)
		img.Set(x, y+1, c)
		img.Set(x+1, y, c)
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

// label writes text with its baseline at (x, y) and returns the x after it.
func label(img *image.RGBA, x, y int, text string) int { return labelColor(img, x, y, text, colText) }

// labelColor is label in colour c.
func labelColor(img *image.RGBA, x, y int, text string, c color.Color) int {
	d := &font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13,
		Dot: fixed.P(x, y)}
	d.DrawString(text)
	return d.Dot.X.Round()
}
