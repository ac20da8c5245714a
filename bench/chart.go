package main

import (
	"fmt"
	"html"
	"math"
	"slices"
	"strings"
)

// The chart: one row per mode and server delay, with two panels each: req/s against
// concurrency (linear y) and p99 latency against concurrency (log y). x is log-scale. One
// polyline per variant, the same colour in every panel, a legend beside each panel.

const (
	panelW, panelH = 560, 300 // a panel, legend included
	plotX, plotY   = 70, 36   // offset of the plot area in the panel
	plotW, plotH   = 330, 210 // plot area
	chartTop       = 50
)

// palette gives the colours of the variants in allVariants order (the A/A control grey).
func palette() []string {
	return []string{"#d62728", "#1f77b4", "#7f7f7f", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"}
}

// series is one variant's polyline in a panel; a y of 0 or less is a missing point.
type series struct {
	name  string
	color string
	width float64
	dash  bool      // prototypes are dashed
	ys    []float64 // one per plan concurrency
}

// chart renders the SVG.
func (r *report) chart() string {
	p := r.cells.plan
	rows := len(r.plan.modes) * len(p.delays)
	w, h := 2*panelW+20, chartTop+rows*panelH+20
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="24" font-size="16" font-weight="bold">httpfx client benchmark (%s run, medians of %d round(s)): req/s and p99 latency vs concurrency</text>`+"\n",
		20, html.EscapeString(r.plan.name), p.rounds)
	row := 0
	for _, m := range r.plan.modes {
		for _, d := range p.delays {
			y0 := chartTop + row*panelH
			var rps, p99 []series
			for _, v := range p.variants {
				s := series{name: v.name, color: colorOf(v.name), width: 1.5, dash: v.extra || v.control}
				if v.name == "httpfx" {
					s.width = 3
				}
				sp := s
				for _, c := range p.concs {
					a := r.cells.agg[cellKey{m.name, d, c, v.name}]
					s.ys = append(s.ys, a.RPS)
					sp.ys = append(sp.ys, ms(a.P99))
				}
				rps, p99 = append(rps, s), append(p99, sp)
			}
			title := fmt.Sprintf("%s (%s), delay %v", m.name, m.title, d)
			r.panel(&b, 10, y0, title+": requests/s", "requests/s", rps, false)
			r.panel(&b, 10+panelW, y0, title+": p99 latency", "p99 latency (ms, log)", p99, true)
			row++
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// panel draws one plot with axes, ticks, labels, polylines and a legend at (x0, y0).
func (r *report) panel(b *strings.Builder, x0, y0 int, title, yLabel string, ss []series, logY bool) {
	concs := r.cells.plan.concs
	fmt.Fprintf(b, `<g transform="translate(%d,%d)">`+"\n", x0, y0)
	fmt.Fprintf(b, `<text x="%d" y="18" font-size="12" font-weight="bold">%s</text>`+"\n", plotX-50, html.EscapeString(title))
	fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>`+"\n", plotX, plotY, plotW, plotH)

	// x: log2 of concurrency.
	lx0, lx1 := math.Log2(float64(concs[0])), math.Log2(float64(concs[len(concs)-1]))
	if lx1 == lx0 {
		lx1 = lx0 + 1
	}
	xOf := func(c int) float64 {
		return plotX + 10 + (math.Log2(float64(c))-lx0)/(lx1-lx0)*(plotW-20)
	}
	for _, c := range concs {
		x := xOf(c)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/>`+"\n", x, plotY, x, plotY+plotH)
		fmt.Fprintf(b, `<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", x, plotY+plotH+14, c)
	}
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle">concurrency (callers, log scale)</text>`+"\n", plotX+plotW/2, plotY+plotH+32)

	// y: linear from 0, or log10 between decades.
	lo, hi := math.Inf(1), 0.0
	for _, s := range ss {
		for _, y := range s.ys {
			if y > 0 {
				lo, hi = math.Min(lo, y), math.Max(hi, y)
			}
		}
	}
	if hi == 0 {
		lo, hi = 1, 10
	}
	var yOf func(float64) float64
	var ticks []float64
	if logY {
		d0, d1 := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
		if d1 == d0 {
			d1++
		}
		yOf = func(v float64) float64 { return plotY + plotH - (math.Log10(v)-d0)/(d1-d0)*plotH }
		for d := d0; d <= d1; d++ {
			ticks = append(ticks, math.Pow(10, d))
		}
	} else {
		step := niceStep(hi / 5)
		top := math.Ceil(hi/step) * step
		yOf = func(v float64) float64 { return plotY + plotH - v/top*plotH }
		for v := 0.0; v <= top+step/2; v += step {
			ticks = append(ticks, v)
		}
	}
	for _, t := range ticks {
		y := yOf(t)
		fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/>`+"\n", plotX, y, plotX+plotW, y)
		fmt.Fprintf(b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", plotX-4, y+4, tickLabel(t))
	}
	fmt.Fprintf(b, `<text transform="translate(%d,%d) rotate(-90)" text-anchor="middle">%s</text>`+"\n",
		plotX-52, plotY+plotH/2, html.EscapeString(yLabel))

	for i, s := range ss {
		var pts []string
		for j, y := range s.ys {
			if y <= 0 {
				continue
			}
			x, yy := xOf(concs[j]), yOf(y)
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, yy))
			fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"/>`+"\n", x, yy, s.color)
		}
		dash := ""
		if s.dash {
			dash = ` stroke-dasharray="6,3"`
		}
		if len(pts) > 1 {
			fmt.Fprintf(b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="%.1f"%s/>`+"\n", strings.Join(pts, " "), s.color, s.width, dash)
		}
		ly := plotY + 8 + i*16
		fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="%.1f"%s/>`+"\n", plotX+plotW+12, ly, plotX+plotW+32, ly, s.color, s.width, dash)
		fmt.Fprintf(b, `<text x="%d" y="%d">%s</text>`+"\n", plotX+plotW+36, ly+4, html.EscapeString(s.name))
	}
	b.WriteString("</g>\n")
}

// colorOf gives each variant the same colour in every run, filtered or not.
func colorOf(name string) string {
	i := slices.IndexFunc(allVariants(), func(v variant) bool { return v.name == name })
	pal := palette()
	return pal[max(i, 0)%len(pal)]
}

// niceStep rounds a raw tick step up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// tickLabel prints a tick value compactly: 20k, 1.5k, 0.1.
func tickLabel(v float64) string {
	switch {
	case v >= 1000:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", v/1000), ".0") + "k"
	case v >= 1:
		return fmt.Sprintf("%.0f", v)
	default:
		return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", v), "0"), ".")
	}
}
