package main

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

// There is no Docker engine in CI, so the compose stack is checked another
// way: the file parses, every service's image or build context exists, and
// every environment variable it sets is one the worker knows.
func TestComposeStackIsConsistent(t *testing.T) {
	t.Parallel()
	root := filepath.Join("..", "..")
	raw, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	require.NoError(t, err)
	var compose struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Build       any               `yaml:"build"`
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
		} `yaml:"services"`
		Volumes map[string]any `yaml:"volumes"`
	}
	require.NoError(t, yaml.Unmarshal(raw, &compose))
	require.Contains(t, compose.Services, "nats")
	require.Contains(t, compose.Services, "cancel-worker")
	require.Contains(t, compose.Services, "bybit-sim")
	require.Contains(t, compose.Volumes, "nats-data")

	known := map[string]bool{}
	for _, s := range settings {
		known[s.env] = true
	}
	for name, svc := range compose.Services {
		switch b := svc.Build.(type) {
		case nil:
			require.NotEmpty(t, svc.Image, "service %s has neither image nor build", name)
			continue
		case string:
			require.FileExists(t, filepath.Join(root, b, "Dockerfile"), "service %s", name)
		default:
			t.Fatalf("service %s: build must be a context path", name)
		}
		require.NotEmpty(t, svc.Command, "service %s", name)
		require.Contains(t, []string{"run", "sim"}, svc.Command[0], "service %s runs a cancel-worker command", name)
		for k := range svc.Environment {
			require.True(t, known[k], "service %s sets %s, which the worker does not know", name, k)
		}
	}
	require.Contains(t, compose.Services["nats"].Command, "--jetstream")

	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	require.NoError(t, err)
	stages := regexp.MustCompile(`(?m)^FROM `).FindAllIndex(df, -1)
	require.GreaterOrEqual(t, len(stages), 2, "multi-stage build")
	final := string(df[stages[len(stages)-1][0]:])
	require.Regexp(t, `(?m)^USER nonroot`, final, "the image runs as non-root")
	require.Contains(t, string(df), "CGO_ENABLED=0", "a static binary")

	f, err := os.Open(filepath.Join(root, ".env.example"))
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, _, ok := strings.Cut(line, "=")
		require.True(t, ok, "%q", line)
		require.True(t, known[k], ".env.example sets %s, which the worker does not know", k)
	}
}
