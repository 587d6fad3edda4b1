package main

import (
	"fmt"
	"slices"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
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
