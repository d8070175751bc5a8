package chaos

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
	"time"
)

// kindColors shade each kind of fault in the plot.
var kindColors = map[Kind]string{
	Kill:      "#e4572e",
	Stop:      "#f3a712",
	Partition: "#6a4c93",
	UCS:       "#29335c",
	Restart:   "#4caf50",
}

// WriteSVG draws the run as Jepsen's latency plots do: every send as a dot
// at its start time and its latency to the acknowledgement (log scale;
// customers and agents in two colours, sends never acknowledged as red
// crosses at the top), over each fault's interval shaded by kind.
func (r *Report) WriteSVG(w io.Writer) error {
	const W, H = 1200, 520
	const left, right, top, bottom = 70, 160, 40, 50
	pw, ph := float64(W-left-right), float64(H-top-bottom)
	span := r.Took
	if span <= 0 {
		span = time.Second
	}
	maxLat := 100 * time.Millisecond
	for _, p := range r.Points {
		maxLat = max(maxLat, p.Latency)
	}
	lo, hi := math.Log10(1), math.Log10(float64(maxLat.Milliseconds())*1.2+1)
	x := func(d time.Duration) float64 { return float64(left) + pw*float64(d)/float64(span) }
	y := func(d time.Duration) float64 {
		ms := max(1, float64(d)/float64(time.Millisecond))
		return float64(top) + ph*(1-(math.Log10(ms)-lo)/(hi-lo))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", W, H, W, H)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", W, H)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15">hachat chaos, seed %d: send latency over time, faults shaded by kind</text>`+"\n", left, r.Seed)
	for _, a := range r.Faults {
		x0, x1 := x(a.Start.Sub(r.Started)), x(a.End.Sub(r.Started))
		if x1-x0 < 1 {
			x1 = x0 + 1
		}
		fmt.Fprintf(&b, `<rect class="fault fault-%s" x="%.1f" y="%d" width="%.1f" height="%.0f" fill="%s" fill-opacity="0.25"><title>%s</title></rect>`+"\n",
			a.Kind, x0, top, x1-x0, ph, kindColors[a.Kind], html.EscapeString(a.Fault.String()))
	}
	// Axes and grid.
	fmt.Fprintf(&b, `<g stroke="#333"><line x1="%d" y1="%d" x2="%d" y2="%d"/><line x1="%d" y1="%d" x2="%d" y2="%d"/></g>`+"\n",
		left, top, left, H-bottom, left, H-bottom, W-right, H-bottom)
	for ms := 1.0; ms <= math.Pow(10, hi); ms *= 10 {
		yy := y(time.Duration(ms * float64(time.Millisecond)))
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n",
			left, yy, W-right, yy, left-6, yy+4, time.Duration(ms*float64(time.Millisecond)))
	}
	step := niceStep(span)
	for t := time.Duration(0); t <= span; t += step {
		xx := x(t)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#333"/><text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n",
			xx, H-bottom, xx, H-bottom+5, xx, H-bottom+18, t)
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">time since start</text>`+"\n", left+int(pw/2), H-12)
	fmt.Fprintf(&b, `<text transform="translate(18 %d) rotate(-90)" text-anchor="middle">latency to acknowledgement (log)</text>`+"\n", top+int(ph/2))
	// Points.
	sideColor := map[string]string{"customer": "#1f77b4", "agent": "#ff7f0e"}
	b.WriteString(`<g class="points">` + "\n")
	for _, p := range r.Points {
		xx := x(p.At)
		if !p.Acked {
			fmt.Fprintf(&b, `<path class="lost" d="M%.1f %dl4 4m0 -4l-4 4" stroke="red"/>`+"\n", xx-2, top+2)
			continue
		}
		c := sideColor[p.Side]
		if c == "" {
			c = "#555"
		}
		fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="1.6" fill="%s" fill-opacity="0.6"/>`+"\n", xx, y(p.Latency), c)
	}
	b.WriteString("</g>\n")
	// Legend.
	lx, ly := W-right+15, top+10
	for _, k := range Kinds {
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="14" height="14" fill="%s" fill-opacity="0.35"/><text x="%d" y="%d">%s</text>`+"\n", lx, ly, kindColors[k], lx+20, ly+11, k)
		ly += 20
	}
	ly += 10
	for _, s := range []string{"customer", "agent"} {
		fmt.Fprintf(&b, `<circle cx="%d" cy="%d" r="4" fill="%s"/><text x="%d" y="%d">%s send</text>`+"\n", lx+7, ly+7, sideColor[s], lx+20, ly+11, s)
		ly += 20
	}
	fmt.Fprintf(&b, `<path d="M%d %dl8 8m0 -8l-8 8" stroke="red"/><text x="%d" y="%d">not acked</text>`+"\n", lx+3, ly+3, lx+20, ly+11)
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// niceStep picks a time-axis step giving about 10 ticks.
func niceStep(span time.Duration) time.Duration {
	for _, s := range []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 15 * time.Second, 30 * time.Second,
		time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 15 * time.Minute, 30 * time.Minute, time.Hour} {
		if span/s <= 12 {
			return s
		}
	}
	return 2 * time.Hour
}
