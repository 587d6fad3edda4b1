package embedded

import (
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TB is the part of a test (testing.TB) that StartForTest and ConnectForTest
// use; taking it as an interface keeps the testing package out of the
// binaries that link this package.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	TempDir() string
	Cleanup(func())
}

// StartForTest starts a server for one test, on a new temporary store unless
// o names one, and shuts it down when the test ends; a server that does not
// start fails the test.
func StartForTest(t TB, o NATSOptions) *server.Server {
	t.Helper()
	if o.StoreDir == "" {
		o.StoreDir = t.TempDir()
	}
	ns, err := StartNATS(o)
	if err != nil {
		t.Fatalf("embedded nats-server: %v", err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// ConnectForTest starts a server for one test (as StartForTest with no
// options) and connects to it; the connection is closed when the test ends.
func ConnectForTest(t TB) (*server.Server, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	ns := StartForTest(t, NATSOptions{})
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatalf("connect to the embedded nats-server: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return ns, nc, js
}
