package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// natsContext is the part of a nats CLI context file
// (~/.config/nats/context/<name>.json, written by `nats context save`; the
// format of github.com/nats-io/jsm.go/natscontext) that says how to connect.
// The worker reads it itself rather than importing jsm.go, whose context
// package brings credential back-ends (1Password, nsc, a NATS service) it
// does not use.
type natsContext struct {
	path     string
	URL      string `json:"url"`
	User     string `json:"user"`
	Password string `json:"password"`
	Token    string `json:"token"`
	Creds    string `json:"creds"`
	NKey     string `json:"nkey"`
	Cert     string `json:"cert"`
	Key      string `json:"key"`
	CA       string `json:"ca"`
}

// contextUnsupported are keys of the format that change how the connection
// or JetStream behaves and that the worker does not implement: a context
// that sets one is refused rather than half-applied.
var contextUnsupported = []string{
	"socks_proxy", "nsc", "jetstream_domain", "jetstream_api_prefix", "jetstream_event_prefix",
	"inbox_prefix", "user_jwt", "user_seed", "tls_first",
	"windows_cert_store", "windows_cert_match_by", "windows_cert_match", "windows_ca_certs_match",
}

// contextIgnored are keys that do not affect the connection.
var contextIgnored = []string{"name", "description", "color_scheme"}

// contextPath finds the file of a context: a path (it contains a slash or
// ends in .json) as it is, a name under $XDG_CONFIG_HOME/nats/context or
// ~/.config/nats/context, as the nats CLI keeps them.
func contextPath(name string, env lookupEnv) (string, error) {
	if strings.ContainsAny(name, `/\`) || strings.HasSuffix(name, ".json") {
		return expandPath(name, env), nil
	}
	if strings.Contains(name, "..") {
		return "", fmt.Errorf("NATS_CONTEXT: %q is not a context name", name)
	}
	dir := env.get("XDG_CONFIG_HOME")
	if dir == "" {
		home := env.get("HOME")
		if home == "" {
			var err error
			if home, err = os.UserHomeDir(); err != nil {
				return "", fmt.Errorf("NATS_CONTEXT: cannot find the home directory to look for context %q: %v", name, err)
			}
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "nats", "context", name+".json"), nil
}

// expandPath expands a leading ~ as the nats CLI does.
func expandPath(p string, env lookupEnv) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		home := env.get("HOME")
		if home == "" {
			home, _ = os.UserHomeDir()
		}
		return filepath.Join(home, strings.TrimPrefix(p, "~"))
	}
	return p
}

func loadNATSContext(name string, env lookupEnv) (natsContext, error) {
	path, err := contextPath(name, env)
	if err != nil {
		return natsContext{}, err
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return natsContext{}, fmt.Errorf("NATS_CONTEXT: context %q: cannot read %s: %v", name, path, errors.Unwrap(err))
	}
	fail := func(format string, args ...any) (natsContext, error) {
		return natsContext{}, fmt.Errorf("NATS_CONTEXT: %s: %s", path, fmt.Sprintf(format, args...))
	}
	// Errors quote key names and positions, never values: a context may
	// hold a password.
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw, &keys); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return fail("not valid JSON (at byte %d)", syn.Offset)
		}
		return fail("not a JSON object of context settings")
	}
	c := natsContext{path: path}
	if err := json.NewDecoder(bytes.NewReader(raw)).Decode(&c); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fail("%q must be a %s", te.Field, te.Type)
		}
		return fail("not a JSON object of context settings")
	}
	known := []string{"url", "user", "password", "token", "creds", "nkey", "cert", "key", "ca"}
	for k, v := range keys {
		switch {
		case slices.Contains(known, k), slices.Contains(contextIgnored, k):
		case slices.Contains(contextUnsupported, k):
			if s := strings.TrimSpace(string(v)); s != `""` && s != "false" && s != "null" && s != "[]" {
				return fail("%q is not supported by cancel-worker; it reads %s", k, strings.Join(known, ", "))
			}
		default:
			return fail("unknown key %q; cancel-worker reads %s", k, strings.Join(known, ", "))
		}
	}
	for _, f := range []struct {
		key string
		val *string
	}{{"creds", &c.Creds}, {"nkey", &c.NKey}, {"cert", &c.Cert}, {"key", &c.Key}, {"ca", &c.CA}} {
		p, err := c.resolveFile(f.key, *f.val, env)
		if err != nil {
			return natsContext{}, err
		}
		*f.val = p
	}
	for _, f := range []struct {
		key string
		val *string
	}{{"password", &c.Password}, {"token", &c.Token}} {
		s, err := c.resolveSecret(f.key, *f.val, env)
		if err != nil {
			return natsContext{}, err
		}
		*f.val = s
	}
	return c, nil
}

// resolveFile turns a file reference (a path, ~/path or file://path) into a
// path; the other schemes of the format (op://, nsc://) are refused.
func (c natsContext) resolveFile(key, ref string, env lookupEnv) (string, error) {
	if ref == "" {
		return "", nil
	}
	if p, ok := strings.CutPrefix(ref, "file://"); ok {
		return expandPath(p, env), nil
	}
	if i := strings.Index(ref, "://"); i > 0 {
		return "", fmt.Errorf("NATS_CONTEXT: %s: %q: %s:// references are not supported by cancel-worker; give a file path", c.path, key, ref[:i])
	}
	return expandPath(ref, env), nil
}

// resolveSecret reads a password or token: literal, file:// or env://.
// Errors never quote the value.
func (c natsContext) resolveSecret(key, ref string, env lookupEnv) (string, error) {
	switch {
	case strings.HasPrefix(ref, "file://"):
		p := expandPath(strings.TrimPrefix(ref, "file://"), env)
		b, err := os.ReadFile(p)
		if err != nil {
			return "", fmt.Errorf("NATS_CONTEXT: %s: %q: cannot read %s: %v", c.path, key, p, errors.Unwrap(err))
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	case strings.HasPrefix(ref, "env://"):
		name := strings.TrimPrefix(ref, "env://")
		v := env.get(name)
		if v == "" {
			return "", fmt.Errorf("NATS_CONTEXT: %s: %q names environment variable %s, which is not set", c.path, key, name)
		}
		return v, nil
	case strings.HasPrefix(ref, "op://"), strings.HasPrefix(ref, "nsc://"), strings.HasPrefix(ref, "data:"):
		scheme, _, _ := strings.Cut(ref, ":")
		return "", fmt.Errorf("NATS_CONTEXT: %s: %q: %s references are not supported by cancel-worker; use a literal, file:// or env://", c.path, key, scheme)
	}
	return ref, nil
}

// fill sets the NATS settings the context gives that neither a flag nor the
// environment set: flags, then the environment, then the context, then the
// defaults.
func (c natsContext) fill(v values, defaulted map[string]bool) {
	for env, val := range map[string]string{
		"NATS_URL": c.URL, "NATS_USER": c.User, "NATS_CREDS": c.Creds, "NATS_NKEY": c.NKey,
		"NATS_CERT": c.Cert, "NATS_KEY": c.Key, "NATS_CA": c.CA,
	} {
		if val != "" && defaulted[env] {
			v[env] = val
		}
	}
	// A secret from the context only when the environment gives neither
	// it nor its _FILE twin.
	if c.Password != "" && defaulted["NATS_PASSWORD"] && defaulted["NATS_PASSWORD_FILE"] {
		v["NATS_PASSWORD"] = c.Password
	}
	if c.Token != "" && defaulted["NATS_TOKEN"] && defaulted["NATS_TOKEN_FILE"] {
		v["NATS_TOKEN"] = c.Token
	}
}
