package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// The benchmark runs end to end on a small burst: every cancel gets a result,
// and the worker paces itself so the exchange never answers 10006.
func TestBenchRunsAndReportsItsTable(t *testing.T) {
	t.Parallel()
	var out, errOut syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	plotFile := filepath.Join(t.TempDir(), "drain.svg")
	require.NoError(t, run(ctx, []string{"bench", "--in-process", "--n", "60", "--limit", "20", "--categories", "linear,spot", "--plot", plotFile}, envFunc(nil), &out, &errOut), "%s", &errOut)
	svg, err := os.ReadFile(plotFile)
	require.NoError(t, err)
	require.Contains(t, string(svg), "<svg")
	row := regexp.MustCompile(`(?m)^\| 60 \| linear,spot \| 20/s per endpoint \| true \| 1 \| 0s \| [^|]+ \| [^|]+ \| [0-9.]+ \| [0-9]+/s \| 0 \|`)
	require.Regexp(t, row, out.String())
}

// The cancel-all row: option cancel-alls beside a burst, paced to Bybit's
// cancel-all budget, cancel every resting order without a 10006.
func TestBenchReportsACancelAllRow(t *testing.T) {
	t.Parallel()
	var out, errOut syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, run(ctx, []string{"bench", "--in-process", "--n", "20", "--batch=false", "--cancel-all", "2", "--cancel-all-orders", "30", "--ip-limit", "500/5s"}, envFunc(nil), &out, &errOut), "%s", &errOut)
	row := regexp.MustCompile(`(?m)^\| 2 option \| 30 \| 500/5s \| 2/2 \| 60 \| [^|]+ \| [0-9]+ \| 0 \| 0\.00 % \|`)
	require.Regexp(t, row, out.String())
}

// The flatten row: resting orders across the four categories, flattened by
// one request at Bybit's base-tier limits, every order cancelled, no 10006.
func TestBenchReportsAFlattenRow(t *testing.T) {
	t.Parallel()
	var out, errOut syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, run(ctx, []string{"bench", "--flatten", "200"}, envFunc(nil), &out, &errOut), "%s", &errOut)
	row := regexp.MustCompile(`(?m)^\| 200 \| inverse 50 linear 50 option 50 spot 50 \| Bybit base tier \| 0s \| true \| 200 \| 1 \| 11 \| [0-9]+ \| 0 \| [^|]+ \| 5s \|$`)
	require.Regexp(t, row, out.String())
}

// The ideal under an IP limit reads it as the rolling window it is: 500/5s
// lets 500 requests go at once. 2000 orders at 200/s per endpoint with
// batching need 7 windows (6 s), not 2000 at a rate of 100 requests a second.
func TestIdealUnderIPLimit(t *testing.T) {
	ip := worker.Rate{N: 500, Per: 5 * time.Second}
	require.Equal(t, 6*time.Second, idealUnderIPLimit(2000, 1, 200, true, 20, ip))
	// Where the IP limit does not bind, the UID budgets alone: 600 at 60/s.
	require.Equal(t, 9*time.Second, idealUnderIPLimit(600, 1, 60, false, 20, ip))
	require.Equal(t, 2*time.Second, idealUnderIPLimit(30, 1, 10, false, 20, ip))
	require.Equal(t, 29*time.Second, idealUnderIPLimit(600, 1, 10, true, 20, ip))
}
