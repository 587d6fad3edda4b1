package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"
)

// healthcheckSettings: only where the worker serves /readyz.
var healthcheckSettings = slices.DeleteFunc(slices.Clone(settings), func(s setting) bool { return s.env != "HTTP_ADDR" })

// runHealthcheck asks /readyz of HTTP_ADDR: nil (exit 0) when the worker
// answers 200, an error with its reason (exit 1) otherwise.
func runHealthcheck(ctx context.Context, args []string, env lookupEnv, stdout, stderr io.Writer) error {
	var timeout time.Duration
	v, err := parseCommand("healthcheck", "", healthcheckSettings, args, env, stderr, func(fs *flag.FlagSet) {
		fs.DurationVar(&timeout, "timeout", 3*time.Second, "how long to wait for the answer")
	})
	if err != nil {
		return err
	}
	url, err := readyzURL(v["HTTP_ADDR"])
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("HTTP_ADDR: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("not ready: %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	why := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("not ready: %s answered %s: %s", url, resp.Status, why)
	}
	fmt.Fprintf(stdout, "%s: %s\n", url, why)
	return nil
}

// readyzURL is the /readyz of a listen address; an empty or wildcard host is
// this host.
func readyzURL(addr string) (string, error) {
	if addr == "" {
		return "", fmt.Errorf("HTTP_ADDR is empty: a worker run so serves no /readyz to ask")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("HTTP_ADDR: %q is not host:port: %v", addr, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/readyz", nil
}
