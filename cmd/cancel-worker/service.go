package main

import (
	"context"
	"log/slog"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// syncService is the sync service beside the worker of `run`.
type syncService struct {
	svc atomic.Pointer[worker.Service]
}

// start sets the worker up (stream, consumer, accounts) and starts the sync
// service. The service stops when ctx ends — before the worker finishes
// stopping, answering its waiting requests with a 503 — or when the
// returned function is called.
func (s *syncService) start(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, w *worker.Worker, cfg worker.Config, reg prometheus.Registerer, log *slog.Logger) (func(), error) {
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
	s.svc.Store(svc)
	stop := context.AfterFunc(ctx, svc.Stop)
	return func() { stop(); svc.Stop() }, nil
}

// ready is /readyz: the worker decides readiness; a sync service that is
// off (the stream captures its subject), or an endpoint of it that is off
// (the stream does not capture its input subject), is named in the detail.
func (s *syncService) ready(ready func() (bool, string)) func() (bool, string) {
	return func() (bool, string) {
		ok, why := ready()
		if svc := s.svc.Load(); svc != nil {
			if on, detail := svc.Status(); !on && detail != "stopped" {
				why += "; " + detail
			}
			for _, off := range svc.Off() {
				why += "; " + off
			}
		}
		return ok, why
	}
}
