package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/require"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker/embedded"
)

// natsWith starts a nats-server adjusted by configure and returns its URL.
func natsWith(t *testing.T, configure func(*server.Options)) string {
	t.Helper()
	ns, err := embedded.StartNATS(embedded.NATSOptions{StoreDir: t.TempDir(), Configure: func(o *server.Options) {
		o.JetStream = false
		configure(o)
	}})
	require.NoError(t, err)
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns.ClientURL()
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, data, 0o600))
	return p
}

// connectCase connects with c and checks the outcome: want "" means success,
// otherwise the error must contain want and no secret.
func connectCase(t *testing.T, c natsConfig, want string, secrets ...string) {
	t.Helper()
	var logs syncBuffer
	nc, err := connectNATS(c, slog.New(slog.NewTextHandler(&logs, nil)))
	if want == "" {
		require.NoError(t, err)
		require.NoError(t, nc.Flush())
		nc.Close()
		return
	}
	require.Error(t, err)
	require.Contains(t, err.Error(), want)
	for _, s := range secrets {
		require.NotContains(t, err.Error()+logs.String(), s)
	}
}

func TestNATSUserPasswordAndToken(t *testing.T) {
	t.Parallel()
	url := natsWith(t, func(o *server.Options) { o.Username, o.Password = "worker", "pa55-word-secret" })
	connectCase(t, natsConfig{url: url, user: "worker", password: "pa55-word-secret"}, "")
	connectCase(t, natsConfig{url: url, user: "worker", password: "wrong-secret"}, "check NATS_USER/NATS_PASSWORD", "wrong-secret", "pa55-word-secret")
	connectCase(t, natsConfig{url: url}, "no credentials were given")

	url = natsWith(t, func(o *server.Options) { o.Authorization = "tok-secret-123" })
	connectCase(t, natsConfig{url: url, token: "tok-secret-123"}, "")
	connectCase(t, natsConfig{url: url, token: "tok-wrong-456"}, "check NATS_TOKEN", "tok-wrong-456", "tok-secret-123")
}

func TestNATSNkey(t *testing.T) {
	t.Parallel()
	user, err := nkeys.CreateUser()
	require.NoError(t, err)
	pub, err := user.PublicKey()
	require.NoError(t, err)
	seed, err := user.Seed()
	require.NoError(t, err)
	stranger, err := nkeys.CreateUser()
	require.NoError(t, err)
	strangerSeed, err := stranger.Seed()
	require.NoError(t, err)
	url := natsWith(t, func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} })
	connectCase(t, natsConfig{url: url, nkey: writeFile(t, "user.nk", seed)}, "")
	connectCase(t, natsConfig{url: url, nkey: writeFile(t, "stranger.nk", strangerSeed)}, "check NATS_NKEY", string(strangerSeed))
	connectCase(t, natsConfig{url: url, nkey: writeFile(t, "bad.nk", []byte("not a seed"))}, "NATS_NKEY")
}

func TestNATSCreds(t *testing.T) {
	t.Parallel()
	operator, err := nkeys.CreateOperator()
	require.NoError(t, err)
	opub, _ := operator.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	account, err := nkeys.CreateAccount()
	require.NoError(t, err)
	apub, _ := account.PublicKey()
	ajwt, err := jwt.NewAccountClaims(apub).Encode(operator)
	require.NoError(t, err)
	creds := func(signer nkeys.KeyPair) []byte {
		user, err := nkeys.CreateUser()
		require.NoError(t, err)
		upub, _ := user.PublicKey()
		ujwt, err := jwt.NewUserClaims(upub).Encode(signer)
		require.NoError(t, err)
		seed, _ := user.Seed()
		b, err := jwt.FormatUserConfig(ujwt, seed)
		require.NoError(t, err)
		return b
	}
	url := natsWith(t, func(o *server.Options) {
		r := &server.MemAccResolver{}
		require.NoError(t, r.Store(apub, ajwt))
		o.TrustedOperators = []*jwt.OperatorClaims{oc}
		o.AccountResolver = r
	})
	connectCase(t, natsConfig{url: url, creds: writeFile(t, "good.creds", creds(account))}, "")
	unknown, err := nkeys.CreateAccount()
	require.NoError(t, err)
	connectCase(t, natsConfig{url: url, creds: writeFile(t, "bad.creds", creds(unknown))}, "check NATS_CREDS")
}

// pki is a CA with a server and a client certificate, generated per test.
type pki struct {
	caFile, serverCert, serverKey, clientCert, clientKey string
	ca                                                   *x509.CertPool
}

func newPKI(t *testing.T) pki {
	t.Helper()
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	issue := func(serial int64, usage x509.ExtKeyUsage) (string, string) {
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		require.NoError(t, err)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "127.0.0.1"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		require.NoError(t, err)
		return writeFile(t, "cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
			writeFile(t, "key.pem", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	}
	p := pki{caFile: writeFile(t, "ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})), ca: x509.NewCertPool()}
	p.ca.AddCert(caCert)
	p.serverCert, p.serverKey = issue(2, x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = issue(3, x509.ExtKeyUsageClientAuth)
	return p
}

func TestNATSTLS(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	serverPair, err := tls.LoadX509KeyPair(p.serverCert, p.serverKey)
	require.NoError(t, err)
	url := natsWith(t, func(o *server.Options) {
		o.TLS, o.TLSVerify = true, true
		o.TLSConfig = &tls.Config{
			Certificates: []tls.Certificate{serverPair}, ClientCAs: p.ca,
			ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
		}
	})
	connectCase(t, natsConfig{url: url, ca: p.caFile, cert: p.clientCert, key: p.clientKey}, "")
	other := newPKI(t)
	connectCase(t, natsConfig{url: url, ca: other.caFile, cert: p.clientCert, key: p.clientKey}, "is not trusted")
	connectCase(t, natsConfig{url: url, ca: p.caFile}, "NATS_CERT")
}

func TestRSAKeyFileSignsTheWorkersRequests(t *testing.T) {
	t.Parallel()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	s := newStack(t, bybittest.Options{AutoCreate: true, Accounts: []bybittest.Account{{APIKey: "rsa-key", RSAPublicKey: &key.PublicKey}}}, nil)
	delete(s.env, "BYBIT_API_SECRET")
	s.env["BYBIT_API_KEY"] = "rsa-key"
	s.env["BYBIT_RSA_PRIVATE_KEY_FILE"] = writeFile(t, "bybit.pem", pemBytes)
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, envFunc(s.env), &logs, &logs) }()
	_, err = s.js.Publish(context.Background(), "orders.cancel", []byte(`{"category":"inverse","symbol":"BTCUSD","orderId":"rsa-1"}`))
	if err != nil { // the worker creates the stream; publish again once it has
		require.Eventually(t, func() bool {
			_, err = s.js.Publish(context.Background(), "orders.cancel", []byte(`{"category":"inverse","symbol":"BTCUSD","orderId":"rsa-1"}`))
			return err == nil
		}, waitFor, 20*time.Millisecond)
	}
	require.Eventually(t, func() bool { return len(s.results()) == 1 }, waitFor, 20*time.Millisecond, "%s", &logs)
	require.Equal(t, "cancelled", string(s.results()[0].Status))
	cancel()
	require.NoError(t, <-done)
	require.NotContains(t, logs.String(), "PRIVATE KEY")
	require.NotContains(t, logs.String(), string(pemBytes[40:80]))

	s.env["BYBIT_API_SECRET"] = "also-a-secret"
	err = run(context.Background(), nil, envFunc(s.env), &logs, &logs)
	require.ErrorContains(t, err, "not both")
	delete(s.env, "BYBIT_API_SECRET")
	s.env["BYBIT_RSA_PRIVATE_KEY_FILE"] = writeFile(t, "bad.pem", []byte("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"))
	err = run(context.Background(), nil, envFunc(s.env), &logs, &logs)
	require.ErrorContains(t, err, "BYBIT_RSA_PRIVATE_KEY_FILE")
}

func writeFileIn(t *testing.T, dir, name, data string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(data), 0o600))
	return p
}
