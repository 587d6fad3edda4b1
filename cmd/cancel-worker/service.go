package main

import (
	"context"
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// startService sets the worker up (stream, consumer, accounts) and starts
// the sync service beside it; the service stops when ctx ends, before the
// worker finishes stopping, answering its waiting requests with a 503.
func startService(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, w *worker.Worker, cfg worker.Config, reg prometheus.Registerer, log *slog.Logger) (*worker.Service, error) {
	if err := w.Setup(ctx); err != nil {
		return nil, err
	}
	svc, err := worker.NewService(worker.ServiceConfig{Conn: nc, JS: js, Worker: cfg, Registerer: reg, Logger: log})
	if err != nil {
		return nil, err
	}
	if err := svc.Start(ctx); err != nil {
		return nil, err
	}
	go func() {
		<-ctx.Done()
		svc.Stop()
	}()
	return svc, nil
}

// readyWithService is /readyz: the worker decides readiness; a sync service
// that is off (the stream captures its subject) is named in the detail.
func readyWithService(ready func() (bool, string), status func() (bool, string)) func() (bool, string) {
	return func() (bool, string) {
		ok, why := ready()
		if on, detail := status(); !on && detail != "stopped" {
			why += "; " + detail
		}
		return ok, why
	}
}
