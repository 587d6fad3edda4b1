package main

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
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
			Ports       []string          `yaml:"ports"`
			Secrets     []string          `yaml:"secrets"`
			DependsOn   map[string]struct {
				Condition string `yaml:"condition"`
			} `yaml:"depends_on"`
			Healthcheck struct {
				Test    []string `yaml:"test"`
				Disable bool     `yaml:"disable"`
			} `yaml:"healthcheck"`
		} `yaml:"services"`
		Volumes map[string]any `yaml:"volumes"`
		Secrets map[string]struct {
			File string `yaml:"file"`
		} `yaml:"secrets"`
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

	// NATS is the release line the tests embed, pinned by tag, and healthy
	// only once its monitoring port answers.
	nats := compose.Services["nats"]
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	require.NoError(t, err)
	line := regexp.MustCompile(`github.com/nats-io/nats-server/v2 v(\d+\.\d+)\.`).FindSubmatch(gomod)
	require.NotNil(t, line)
	require.Equal(t, "nats:"+string(line[1])+"-alpine", nats.Image)
	require.Equal(t, []string{"CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8222/healthz"}, nats.Healthcheck.Test)
	require.Contains(t, nats.Command, "8222")

	// Every published port is on loopback only.
	for name, svc := range compose.Services {
		for _, p := range svc.Ports {
			require.True(t, strings.HasPrefix(p, "127.0.0.1:"), "service %s publishes %s beyond this host", name, p)
		}
	}

	// The worker waits for a healthy NATS, reads its secret from a compose
	// secret file, never from the environment, and is health-checked by the
	// image's HEALTHCHECK (the simulator opts out: it has no /readyz).
	w := compose.Services["cancel-worker"]
	require.Equal(t, "service_healthy", w.DependsOn["nats"].Condition)
	require.Equal(t, []string{"bybit_api_secret"}, w.Secrets)
	require.Equal(t, "/run/secrets/bybit_api_secret", w.Environment["BYBIT_API_SECRET_FILE"])
	require.NotContains(t, w.Environment, "BYBIT_API_SECRET")
	require.False(t, w.Healthcheck.Disable)
	require.True(t, compose.Services["bybit-sim"].Healthcheck.Disable)
	secretFile := compose.Secrets["bybit_api_secret"].File
	require.Equal(t, "${BYBIT_API_SECRET_FILE:-./testdata/bybit-sim.secret}", secretFile)
	sim, err := os.ReadFile(filepath.Join(root, "testdata", "bybit-sim.secret"))
	require.NoError(t, err)
	require.Equal(t, bybittest.DemoAPISecret+"\n", string(sim))
	require.Equal(t, bybittest.DemoAPIKey, strings.TrimSuffix(strings.TrimPrefix(w.Environment["BYBIT_API_KEY"], "${BYBIT_API_KEY:-"), "}"))

	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	require.NoError(t, err)
	stages := regexp.MustCompile(`(?m)^FROM `).FindAllIndex(df, -1)
	require.GreaterOrEqual(t, len(stages), 2, "multi-stage build")
	final := string(df[stages[len(stages)-1][0]:])
	require.Regexp(t, `(?m)^USER nonroot`, final, "the image runs as non-root")
	require.Contains(t, string(df), "CGO_ENABLED=0", "a static binary")
	require.Regexp(t, `(?m)^HEALTHCHECK .*\\\n\s+CMD \["/usr/local/bin/cancel-worker", "healthcheck"\]`, final)
	require.Regexp(t, `(?m)^EXPOSE 9478$`, final)
	require.Contains(t, string(df), "-X main.version=${VERSION}")

	// The build context leaves out the history and local secrets.
	di, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	require.NoError(t, err)
	for _, pattern := range []string{".git", ".env", "*.secret", "*.creds"} {
		require.Regexp(t, `(?m)^`+regexp.QuoteMeta(pattern)+`$`, string(di))
	}

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

// The file loads as the Compose Specification defines it: checked against
// the specification's own JSON Schema (testdata/compose-spec.json, from
// github.com/compose-spec/compose-spec schema/compose-spec.json at commit
// 170098ba07d9f53c383a41bfd4c5166b0a4529a6, Apache-2.0), the schema
// `docker compose` v2 validates with.
func TestComposeFileFollowsTheComposeSpecification(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(filepath.Join("..", "..", "docker-compose.yml"))
	require.NoError(t, err)
	var doc any
	require.NoError(t, yaml.Unmarshal(raw, &doc))
	spec, err := os.Open(filepath.Join("testdata", "compose-spec.json"))
	require.NoError(t, err)
	defer spec.Close()
	schemaDoc, err := jsonschema.UnmarshalJSON(spec)
	require.NoError(t, err)
	c := jsonschema.NewCompiler()
	require.NoError(t, c.AddResource("compose_spec.json", schemaDoc))
	schema, err := c.Compile("compose_spec.json")
	require.NoError(t, err)
	require.NoError(t, schema.Validate(doc))

	// The check bites: a misspelt key is refused.
	bad := strings.Replace(string(raw), "depends_on:", "depend_on:", 1)
	require.NoError(t, yaml.Unmarshal([]byte(bad), &doc))
	require.Error(t, schema.Validate(doc))
}
