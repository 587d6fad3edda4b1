// Package embedded runs in this process what the worker needs around it: an
// embedded nats-server with JetStream on loopback, and a buffer for the logs
// of what runs beside it. Tests, the demo and the benchmark use it;
// `cancel-worker run` never does.
package embedded

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// NATSOptions configure an embedded server.
type NATSOptions struct {
	// StoreDir is where JetStream keeps its files. Required.
	StoreDir string
	// Port is the client port; -1 picks a free one.
	Port int
	// ConfigFile, when set, is a nats-server configuration file the options
	// start from (accounts, users, permissions).
	ConfigFile string
	// Configure may adjust the options before the server starts (auth,
	// TLS, clustering).
	Configure func(*server.Options)
}

// StartNATS starts a JetStream-enabled nats-server on 127.0.0.1 and waits
// until it accepts connections. The caller shuts it down with
// Shutdown and WaitForShutdown.
func StartNATS(o NATSOptions) (*server.Server, error) {
	if o.StoreDir == "" {
		return nil, errors.New("embedded: StoreDir is required")
	}
	if o.Port == 0 {
		o.Port = -1
	}
	opts := &server.Options{}
	if o.ConfigFile != "" {
		var err error
		if opts, err = server.ProcessConfigFile(o.ConfigFile); err != nil {
			return nil, fmt.Errorf("nats-server config: %w", err)
		}
	}
	opts.Host, opts.Port, opts.JetStream, opts.StoreDir, opts.NoLog, opts.NoSigs = "127.0.0.1", o.Port, true, o.StoreDir, true, true
	if o.Configure != nil {
		o.Configure(opts)
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats-server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return nil, errors.New("nats-server did not become ready in 30s")
	}
	return s, nil
}

// StartTempNATS starts an embedded server whose JetStream store is a new
// temporary folder named after prefix. stop shuts the server down and removes
// the folder.
func StartTempNATS(prefix string) (s *server.Server, stop func(), err error) {
	store, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, nil, err
	}
	s, err = StartNATS(NATSOptions{StoreDir: store})
	if err != nil {
		os.RemoveAll(store)
		return nil, nil, err
	}
	return s, func() { s.Shutdown(); s.WaitForShutdown(); os.RemoveAll(store) }, nil
}
