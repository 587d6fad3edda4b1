package main

import (
	"bytes"
	"crypto/rsa"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/worker"
)

// accountEntry is one account of BYBIT_ACCOUNTS_FILE (JSON or YAML).
type accountEntry struct {
	APIKey            string         `yaml:"apiKey"`
	APISecret         bybit.Secret   `yaml:"apiSecret"`
	APISecretFile     string         `yaml:"apiSecretFile"`
	RSAPrivateKeyFile string         `yaml:"rsaPrivateKeyFile"`
	BaseURL           string         `yaml:"baseUrl"`
	WSURL             string         `yaml:"wsUrl"`
	Limits            map[string]int `yaml:"limits"`
	LimitGroup        string         `yaml:"limitGroup"`
	// The account's own subjects: a request on one is for this account.
	CancelSubject        string `yaml:"cancelSubject"`
	CancelAllSubject     string `yaml:"cancelAllSubject"`
	SyncCancelSubject    string `yaml:"syncCancelSubject"`
	SyncCancelAllSubject string `yaml:"syncCancelAllSubject"`
	// DCPWindow arms Bybit's Disconnect Cancel All for the account
	// (BYBIT_DCP_WINDOW for this account), e.g. "30s".
	DCPWindow string `yaml:"dcpWindow"`
}

// accountCreds is an account resolved from the file: its key, its signer
// material and its options.
type accountCreds struct {
	apiKey     string
	secret     bybit.Secret
	rsaKey     *rsa.PrivateKey
	baseURL    string
	wsURL      string
	limits     map[string]int
	limitGroup string
	subjects   worker.AccountSubjects
	dcpWindow  time.Duration
}

// readAccountsFile reads BYBIT_ACCOUNTS_FILE. Errors name the file and the
// account, never a secret.
func readAccountsFile(path, defaultBaseURL, defaultWSURL string, confirm bool) (map[string]accountCreds, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("BYBIT_ACCOUNTS_FILE: cannot read %s: %v", path, errors.Unwrap(err))
	}
	var file struct {
		Accounts map[string]accountEntry `yaml:"accounts"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil {
		// yaml's messages quote the offending line number and field name,
		// not values.
		return nil, fmt.Errorf("BYBIT_ACCOUNTS_FILE: %s: %s", path, scrubYAMLError(err))
	}
	if len(file.Accounts) == 0 {
		return nil, fmt.Errorf("BYBIT_ACCOUNTS_FILE: %s has no accounts (want accounts: {name: {apiKey: ..., apiSecretFile: ...}})", path)
	}
	out := map[string]accountCreds{}
	names := make([]string, 0, len(file.Accounts))
	for name := range file.Accounts {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		c, err := file.Accounts[name].resolve(name, path, defaultBaseURL, defaultWSURL, confirm)
		if err != nil {
			return nil, fmt.Errorf("BYBIT_ACCOUNTS_FILE: account %q: %w", name, err)
		}
		out[name] = c
	}
	return out, nil
}

// resolve checks the account name of the accounts file at path and reads its
// signer; the base and WebSocket URLs default to the default account's.
func (e accountEntry) resolve(name, path, defaultBaseURL, defaultWSURL string, confirm bool) (accountCreds, error) {
	c := accountCreds{apiKey: e.APIKey, secret: e.APISecret, baseURL: e.BaseURL, wsURL: e.WSURL, limits: e.Limits, limitGroup: e.LimitGroup,
		subjects: worker.AccountSubjects{CancelSubject: e.CancelSubject, CancelAllSubject: e.CancelAllSubject,
			SyncCancelSubject: e.SyncCancelSubject, SyncCancelAllSubject: e.SyncCancelAllSubject}}
	if strings.TrimSpace(name) == "" {
		return c, errors.New("an account needs a name")
	}
	if e.APIKey == "" {
		return c, errors.New("apiKey is required")
	}
	if e.DCPWindow != "" {
		d, err := time.ParseDuration(e.DCPWindow)
		if err != nil {
			return c, fmt.Errorf("dcpWindow %q is not a Go duration such as 30s", e.DCPWindow)
		}
		c.dcpWindow = d
	}
	if name == worker.DefaultAccount && c.subjects != (worker.AccountSubjects{}) {
		return c, errors.New("the default account's subjects are NATS_CANCEL_SUBJECT and the other NATS_* settings")
	}
	if err := e.readSigner(path, &c); err != nil {
		return c, err
	}
	if err := c.resolveURLs(defaultBaseURL, defaultWSURL, confirm); err != nil {
		return c, err
	}
	for k, v := range e.Limits {
		if _, known := worker.DefaultLimits()[k]; !known || v < 0 {
			return c, fmt.Errorf("limits: %q is not endpoint/category with a limit of 0 or more", k)
		}
	}
	return c, nil
}

// readSigner reads the one secret source the entry sets (files relative
// to the accounts file at path).
func (e accountEntry) readSigner(path string, c *accountCreds) error {
	sources := 0
	for _, set := range []bool{!e.APISecret.IsZero(), e.APISecretFile != "", e.RSAPrivateKeyFile != ""} {
		if set {
			sources++
		}
	}
	if sources != 1 {
		return errors.New("set exactly one of apiSecret, apiSecretFile or rsaPrivateKeyFile")
	}
	if e.APISecretFile != "" {
		b, err := os.ReadFile(relativeTo(path, e.APISecretFile))
		if err != nil {
			return fmt.Errorf("cannot read apiSecretFile %s: %v", e.APISecretFile, errors.Unwrap(err))
		}
		c.secret = bybit.Secret(strings.TrimRight(string(b), "\r\n"))
	}
	if e.RSAPrivateKeyFile != "" {
		b, err := os.ReadFile(relativeTo(path, e.RSAPrivateKeyFile))
		if err != nil {
			return fmt.Errorf("cannot read rsaPrivateKeyFile %s: %v", e.RSAPrivateKeyFile, errors.Unwrap(err))
		}
		var perr error
		if c.rsaKey, perr = bybit.ParseRSAPrivateKey(b); perr != nil {
			return fmt.Errorf("rsaPrivateKeyFile %s: %v", e.RSAPrivateKeyFile, perr)
		}
	}
	return nil
}

// resolveURLs checks the account's wsUrl or finds it from its baseUrl, and
// fills in the default account's where the entry gives none.
func (c *accountCreds) resolveURLs(defaultBaseURL, defaultWSURL string, confirm bool) error {
	switch {
	case c.wsURL != "" && !strings.HasPrefix(c.wsURL, "ws://") && !strings.HasPrefix(c.wsURL, "wss://"):
		return fmt.Errorf("wsUrl %q must start with ws:// or wss://", c.wsURL)
	case c.wsURL == "" && c.baseURL != "":
		ws, err := bybit.PrivateStreamFor(c.baseURL)
		if err != nil && confirm {
			return fmt.Errorf("wsUrl %s", wsURLMissing("wsUrl", err))
		}
		c.wsURL = ws
	case c.wsURL == "":
		c.wsURL = defaultWSURL
	}
	if c.baseURL == "" {
		c.baseURL = defaultBaseURL
	}
	return nil
}

func relativeTo(file, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(filepath.Dir(file), p)
}

// unknownField is yaml's report of a key the file's structure lacks.
var unknownField = regexp.MustCompile(`^line (\d+): field (\S+) not found in type (\S+)`)

// yamlKeys are the keys a struct takes, in its order.
func yamlKeys(v any) []string {
	t := reflect.TypeOf(v)
	keys := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		if k, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); k != "" {
			keys = append(keys, k)
		}
	}
	return keys
}

// scrubYAMLError keeps yaml's position and kind of error but drops quoted
// values, which could be a secret on a malformed line. An unknown key is
// told with the keys allowed there, not a Go type name.
func scrubYAMLError(err error) string {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs := make([]string, 0, len(te.Errors))
		for _, m := range te.Errors {
			if g := unknownField.FindStringSubmatch(m); g != nil {
				where, allowed := "at the top level", []string{"accounts"}
				if strings.HasSuffix(g[3], "accountEntry") {
					where, allowed = "in an account", yamlKeys(accountEntry{})
				}
				msgs = append(msgs, fmt.Sprintf("line %s: field %s not found %s; allowed keys: %s", g[1], g[2], where, strings.Join(allowed, ", ")))
				continue
			}
			if i := strings.Index(m, "`"); i >= 0 {
				m = m[:i] + "(value hidden)"
			}
			msgs = append(msgs, m)
		}
		return strings.Join(msgs, "; ")
	}
	s := err.Error()
	if i := strings.Index(s, "`"); i >= 0 {
		s = s[:i] + "(value hidden)"
	}
	return s
}

func (c accountCreds) client(rc runConfig) (*bybit.Client, error) {
	return bybit.NewClient(bybit.Options{
		BaseURL: c.baseURL, APIKey: c.apiKey, APISecret: c.secret, RSAPrivateKey: c.rsaKey,
		RecvWindow: rc.recvWindow, Timeout: rc.timeout,
	})
}
