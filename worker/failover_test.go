package worker_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
)

// freePort picks a loopback port a node can listen on later, below the
// kernel's ephemeral range (32768–60999 on Linux): a port taken from that range
// with ":0" and closed again can be handed out meanwhile as the source port of
// any outgoing connection or to another ":0" listener, and the node then fails
// to listen ("did not become ready") on a loaded machine.
func freePort(t *testing.T) int {
	t.Helper()
	for range 100 {
		port := 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		ln.Close()
		return port
	}
	t.Fatal("no free loopback port in 20000-31999")
	return 0
}

// A three-node JetStream cluster with the stream at R3 and two workers on one
// durable consumer: the stream leader, then the server a worker is connected
// to, are shut down mid-burst; the workers carry on through the other nodes
// and every request gets exactly one result, every order cancelled.
func TestClusterFailoverWithTwoWorkers(t *testing.T) {
	t.Parallel()
	const nodes = 3
	clientPorts, routePorts := make([]int, nodes), make([]int, nodes)
	var routes, urls []string
	for i := range nodes {
		clientPorts[i], routePorts[i] = freePort(t), freePort(t)
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", routePorts[i]))
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", clientPorts[i]))
	}
	servers := map[string]*server.Server{}
	stores := map[string]string{}
	start := func(i int) {
		name := fmt.Sprintf("n%d", i+1)
		if stores[name] == "" {
			stores[name] = t.TempDir()
		}
		s, err := embedded.StartNATS(embedded.NATSOptions{StoreDir: stores[name], Port: clientPorts[i], Configure: func(o *server.Options) {
			o.ServerName = name
			o.Cluster = server.ClusterOpts{Name: "failover", Host: "127.0.0.1", Port: routePorts[i]}
			o.Routes = server.RoutesFromStr(strings.Join(routes, ","))
		}})
		require.NoError(t, err)
		servers[name] = s
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	}
	for i := range nodes {
		start(i)
	}
	url := strings.Join(urls, ",")

	ex := bybittest.New(bybittest.Options{AutoCreate: true, Latency: 50 * time.Millisecond})
	srvURL := startExchange(t, ex)
	e := setup(t, bybittest.Options{}) // for its configuration and logger; its own broker is not used
	cfg := e.cfg
	cfg.StreamReplicas = 3

	connect := func() (*nats.Conn, jetstream.JetStream) { return connectForFailover(t, url) }
	_, tjs := connect()
	require.Eventually(t, func() bool { // the cluster elects its meta leader
		_, err := worker.EnsureStream(context.Background(), tjs, cfg)
		return err == nil
	}, waitFor, 100*time.Millisecond)

	var conns []*nats.Conn
	for range 2 {
		nc, wjs := connect()
		conns = append(conns, nc)
		_, stop := runWorker(t, cfg, wjs, demoClient(t, srvURL, 0))
		t.Cleanup(func() { _ = stop() })
	}

	const n = 60
	for i := range n {
		// With a Nats-Msg-Id, as a user should: a retry after a lost PubAck
		// is not stored as a second request for the same order.
		require.Eventually(t, func() bool {
			_, err := tjs.Publish(context.Background(), cfg.CancelSubject, []byte(fmt.Sprintf(`{"category":"linear","symbol":"BTCUSDT","orderId":"f-%d"}`, i)),
				jetstream.WithMsgID(fmt.Sprintf("failover-%d", i)))
			return err == nil
		}, waitFor, 50*time.Millisecond)
	}
	results := func() []messages.Result { return storedResultsOf(t, tjs, cfg) }
	require.Eventually(t, func() bool { return len(results()) >= 10 }, waitFor, 20*time.Millisecond)

	stream, err := tjs.Stream(context.Background(), cfg.Stream)
	require.NoError(t, err)
	info, err := stream.Info(context.Background())
	require.NoError(t, err)
	leader := info.Cluster.Leader
	require.NotEmpty(t, leader)
	servers[leader].Shutdown()
	servers[leader].WaitForShutdown()
	require.Eventually(t, func() bool { return len(results()) >= 25 }, waitFor, 20*time.Millisecond, "%s", e.logs)

	// The old leader comes back (an R3 stream needs two of three nodes),
	// then the server the first worker is connected to goes down.
	var leaderIndex int
	_, err = fmt.Sscanf(leader, "n%d", &leaderIndex)
	require.NoError(t, err)
	start(leaderIndex - 1)
	name := conns[0].ConnectedServerName()
	require.NotEmpty(t, name)
	servers[name].Shutdown()
	servers[name].WaitForShutdown()
	// Judged on a complete read: a read during a leader change may stop short.
	var got []messages.Result
	require.Eventually(t, func() bool { got = results(); return len(got) >= n }, waitFor, 20*time.Millisecond, "%s", e.logs)
	requireOneCancelledResultEach(t, ex, got, n)
}
