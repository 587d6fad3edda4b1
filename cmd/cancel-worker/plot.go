package main

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/replay"
)

// plotDrain draws cumulative results over time against the ideal: a budget
// of B a second, fully available at the start. The file's extension (.svg,
// .png) picks the format.
func plotDrain(file string, at []time.Duration, n, budget int, title string) error {
	slices.Sort(at)
	got := make(plotter.XYs, 0, len(at)+1)
	got = append(got, plotter.XY{})
	for i, d := range at {
		got = append(got, plotter.XY{X: d.Seconds(), Y: float64(i + 1)})
	}
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "seconds since the burst was published"
	p.Y.Label.Text = "results"
	p.Add(plotter.NewGrid())
	line, err := plotter.NewLine(got)
	if err != nil {
		return err
	}
	line.Width = vg.Points(2)
	p.Add(line)
	p.Legend.Add("measured", line)
	if budget > 0 {
		end := float64(n-budget) / float64(budget)
		ideal, err := plotter.NewLine(plotter.XYs{{X: 0, Y: float64(min(budget, n))}, {X: max(end, 0), Y: float64(n)}})
		if err != nil {
			return err
		}
		ideal.Dashes = []vg.Length{vg.Points(6), vg.Points(4)}
		p.Add(ideal)
		p.Legend.Add(fmt.Sprintf("ideal (%d/s from the start)", budget), ideal)
	}
	p.Legend.Top = true
	p.Legend.Left = true
	return p.Save(8*vg.Inch, 4*vg.Inch, file)
}

// statusColors colours a replay's statuses; unanswered is the loudest.
var statusColors = map[string]color.Color{
	"cancelled":            color.RGBA{R: 0x1b, G: 0x9e, B: 0x77, A: 0xff},
	"not_open":             color.RGBA{R: 0x75, G: 0x70, B: 0xb3, A: 0xff},
	"rejected":             color.RGBA{R: 0xe6, G: 0xab, B: 0x02, A: 0xff},
	"invalid":              color.RGBA{R: 0x66, G: 0x66, B: 0x66, A: 0xff},
	"failed":               color.RGBA{R: 0xd9, G: 0x5f, B: 0x02, A: 0xff},
	replay.StateUnanswered: color.RGBA{R: 0xe7, G: 0x29, B: 0x8a, A: 0xff},
	replay.StatePending:    color.RGBA{R: 0xa0, G: 0xa0, B: 0xa0, A: 0xff},
}

// plotTimeline draws a replay as two aligned panels over the same time axis:
// requests and results published (cumulative), and each request's
// publish→result latency by status at the time of the result, with requests
// that have no result marked along the top.
func plotTimeline(file string, rows []*replay.Row) error {
	format := strings.TrimPrefix(strings.ToLower(filepath.Ext(file)), ".")
	if format != "png" && format != "svg" {
		return fmt.Errorf("--plot %s: the file must end in .png or .svg", file)
	}
	if len(rows) == 0 {
		return fmt.Errorf("--plot %s: no requests in the window to draw", file)
	}
	t0 := rows[0].RequestTime
	secs := func(t time.Time) float64 { return t.Sub(t0).Seconds() }

	var reqAt, resAt []float64
	maxLat := 1.0
	byStatus := map[string]plotter.XYs{}
	for _, r := range rows {
		reqAt = append(reqAt, secs(r.RequestTime))
		if r.ResultTime != nil {
			resAt = append(resAt, secs(*r.ResultTime))
			maxLat = max(maxLat, *r.LatencyMs)
		}
	}
	for _, r := range rows {
		// A result is placed when it was published; a request without
		// one, when it was published, above every latency.
		xy := plotter.XY{X: secs(r.RequestTime), Y: maxLat * 1.1}
		if r.LatencyMs != nil {
			xy = plotter.XY{X: secs(*r.ResultTime), Y: *r.LatencyMs}
		}
		byStatus[r.Status] = append(byStatus[r.Status], xy)
	}

	flow := plot.New()
	flow.Title.Text = fmt.Sprintf("%d requests from %s (UTC)", len(rows), t0.UTC().Format(replay.TimeFormat))
	flow.Y.Label.Text = "published (cumulative)"
	flow.Add(plotter.NewGrid())
	for i, series := range []struct {
		name string
		at   []float64
	}{{"requests", reqAt}, {"results", resAt}} {
		if len(series.at) == 0 {
			continue
		}
		slices.Sort(series.at)
		xys := make(plotter.XYs, len(series.at))
		for j, x := range series.at {
			xys[j] = plotter.XY{X: x, Y: float64(j + 1)}
		}
		line, err := plotter.NewLine(xys)
		if err != nil {
			return err
		}
		line.Width = vg.Points(1.5)
		if i == 1 {
			line.Color = statusColors["cancelled"]
		}
		flow.Add(line)
		flow.Legend.Add(series.name, line)
	}
	flow.Legend.Top, flow.Legend.Left = false, false

	lat := plot.New()
	lat.X.Label.Text = "seconds since the first request (latency: when the result was published; no result: when the request was, marked at the top)"
	lat.Y.Label.Text = "publish→result latency (ms)"
	lat.Add(plotter.NewGrid())
	for _, status := range append(slices.Clone(replay.StatusOrder), otherStatuses(byStatus)...) {
		xys := byStatus[status]
		if len(xys) == 0 {
			continue
		}
		sc, err := plotter.NewScatter(xys)
		if err != nil {
			return err
		}
		sc.Color = statusColors[status]
		if sc.Color == nil {
			sc.Color = color.Black
		}
		sc.Radius = vg.Points(2.5)
		sc.Shape = draw.CircleGlyph{}
		if status == replay.StateUnanswered || status == replay.StatePending {
			sc.Shape, sc.Radius = draw.CrossGlyph{}, vg.Points(4)
		}
		lat.Add(sc)
		lat.Legend.Add(fmt.Sprintf("%s (%d)", status, len(xys)), sc)
	}
	lat.Legend.Top, lat.Legend.Left = true, false
	// One time axis for both panels.
	lo, hi := min(flow.X.Min, lat.X.Min), max(flow.X.Max, lat.X.Max)
	flow.X.Min, flow.X.Max, lat.X.Min, lat.X.Max = lo, hi, lo, hi

	w, h := 10*vg.Inch, 7*vg.Inch
	canvas, err := draw.NewFormattedCanvas(w, h, format)
	if err != nil {
		return err
	}
	plots := [][]*plot.Plot{{flow}, {lat}}
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadX: vg.Millimeter, PadY: 4 * vg.Millimeter,
		PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 2 * vg.Millimeter}
	cells := plot.Align(plots, tiles, draw.New(canvas))
	flow.Draw(cells[0][0])
	lat.Draw(cells[1][0])
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := canvas.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func otherStatuses(m map[string]plotter.XYs) []string {
	var out []string
	for k := range m {
		if !slices.Contains(replay.StatusOrder, k) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}
