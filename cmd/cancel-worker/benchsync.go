package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// syncReport is what --sync measured: from sending each sync request to its
// reply.
type syncReport struct {
	mu            sync.Mutex
	latencies     []time.Duration
	errors        int
	p50, p99, max time.Duration
}

// syncBench sends the cancels as sync requests at o.rate a second, each
// waiting for its reply in its own goroutine.
func syncBench(ctx context.Context, nc *nats.Conn, subject string, o benchOptions, rep *syncReport) error {
	if o.rate <= 0 {
		return errors.New("--sync needs --rate")
	}
	t := time.NewTicker(time.Second / time.Duration(o.rate))
	defer t.Stop()
	var wg sync.WaitGroup
	for i := range o.n {
		body := benchCancel(o, i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			reply, err := nc.RequestMsg(&nats.Msg{Subject: subject, Data: body, Header: nats.Header{messages.HeaderTimeout: []string{"20s"}}}, 30*time.Second)
			d := time.Since(start)
			rep.mu.Lock()
			defer rep.mu.Unlock()
			if err != nil || reply.Header.Get(micro.ErrorCodeHeader) != "" {
				rep.errors++
				return
			}
			rep.latencies = append(rep.latencies, d)
		}()
		select {
		case <-t.C:
		case <-ctx.Done():
			wg.Wait()
			return ctx.Err()
		}
	}
	wg.Wait()
	rep.mu.Lock()
	defer rep.mu.Unlock()
	if len(rep.latencies) > 0 {
		slices.Sort(rep.latencies)
		rep.p50, rep.p99 = p50p99(rep.latencies)
		rep.max = rep.latencies[len(rep.latencies)-1]
	}
	return nil
}

// print writes the sync row beside the publish→result latency of the same run.
func (r *syncReport) print(w io.Writer, o benchOptions, res benchResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(w, "\n| sync cancels | rate | request→reply p50 | p99 | max | errors or timeouts | publish→result p50 | p99 |\n")
	fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(w, "| %d | %d/s | %v | %v | %v | %d | %v | %v |\n", len(r.latencies)+r.errors, o.rate,
		r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), r.max.Round(10*time.Microsecond), r.errors,
		res.p50.Round(10*time.Microsecond), res.p99.Round(10*time.Microsecond))
}
