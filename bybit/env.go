package bybit

import (
	"fmt"
	"strings"
)

// Environment is one of Bybit's documented sites: its REST host and its
// private WebSocket, when Bybit documents one (docs/v5/guide.mdx lists the
// regional REST hosts, docs/v5/ws/connect the regional stream hosts).
type Environment struct {
	// Name is the BYBIT_ENV preset.
	Name string
	// Site is who it is for.
	Site    string
	RESTURL string
	// PrivateStreamURL is empty where Bybit documents no stream host.
	PrivateStreamURL string
}

// Environments are the presets.
var Environments = []Environment{
	{"mainnet", "mainnet (www.bybit.com)", MainnetURL, "wss://stream.bybit.com/v5/private"},
	{"testnet", "testnet (testnet.bybit.com)", TestnetURL, "wss://stream-testnet.bybit.com/v5/private"},
	{"demo", "demo trading", DemoURL, "wss://stream-demo.bybit.com/v5/private"},
	{"mainnet-tr", "accounts registered at www.bybit.tr (Turkey)", "https://api.bybit.tr", "wss://stream.bybit.tr/v5/private"},
	{"mainnet-kz", "accounts registered at www.bybit.kz (Kazakhstan)", "https://api.bybit.kz", "wss://stream.bybit.kz/v5/private"},
	{"mainnet-ge", "accounts registered at www.bybitgeorgia.ge (Georgia)", "https://api.bybitgeorgia.ge", "wss://stream.bybitgeorgia.ge/v5/private"},
	{"mainnet-id", "accounts registered at www.bybit.id (Indonesia)", "https://api.bybit.id", "wss://stream.bybit.id/v5/private"},
	{"mainnet-jp", "accounts registered at www.manepa.jp (Japan)", "https://api.manepa.jp", "wss://stream.manepa.jp/v5/private"},
	// REST hosts for which Bybit documents no private stream: BYBIT_WS_URL
	// must say which to use (or confirmations must be off).
	{"mainnet-nl", "Netherlands users", "https://api.bybit.nl", ""},
	{"mainnet-ae", "United Arab Emirates users", "https://api.bybit.ae", ""},
}

// EnvironmentNames lists the presets, for messages.
func EnvironmentNames() string {
	names := make([]string, len(Environments))
	for i, e := range Environments {
		names[i] = e.Name
	}
	return strings.Join(names, ", ")
}

// EnvironmentFor returns a preset by name.
func EnvironmentFor(name string) (Environment, bool) {
	for _, e := range Environments {
		if e.Name == name {
			return e, true
		}
	}
	return Environment{}, false
}

// BaseURLFor maps an environment name (mainnet, testnet, demo, or a
// regional preset) to its REST host.
func BaseURLFor(env string) (string, error) {
	if e, ok := EnvironmentFor(env); ok {
		return e.RESTURL, nil
	}
	return "", fmt.Errorf("unknown Bybit environment %q: want one of %s", env, EnvironmentNames())
}

// WSURLFor returns the private WebSocket of a preset; an error when Bybit
// documents none for it.
func WSURLFor(env string) (string, error) {
	e, ok := EnvironmentFor(env)
	switch {
	case !ok:
		return "", fmt.Errorf("bybit: unknown environment %q", env)
	case e.PrivateStreamURL == "":
		return "", fmt.Errorf("Bybit documents no private WebSocket for %s (%s, %s)", e.Name, e.Site, e.RESTURL)
	}
	return e.PrivateStreamURL, nil
}

// PrivateStreamFor returns the private WebSocket that goes with a REST base
// URL: a preset's documented stream, or for a plain http:// URL (the
// simulator, a local stack) the same host's /v5/private. For any other host
// the stream cannot be guessed (Bybit's regional sites use other hosts), and
// the error says so.
func PrivateStreamFor(baseURL string) (string, error) {
	base := strings.TrimRight(baseURL, "/")
	for _, e := range Environments {
		if base == e.RESTURL {
			if e.PrivateStreamURL == "" {
				return "", fmt.Errorf("Bybit documents no private WebSocket for %s (%s)", base, e.Site)
			}
			return e.PrivateStreamURL, nil
		}
	}
	if rest, ok := strings.CutPrefix(base, "http://"); ok {
		return "ws://" + rest + "/v5/private", nil
	}
	return "", fmt.Errorf("the private WebSocket of %s cannot be guessed (Bybit's regional sites use a stream host of their own)", base)
}
