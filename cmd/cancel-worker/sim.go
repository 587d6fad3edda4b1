package main

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/bybit-cancel-worker/bybit-cancel-worker/bybit/bybittest"
	"github.com/bybit-cancel-worker/bybit-cancel-worker/messages"
)

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, " ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// simSetup is what the sim's flags ask for: the keys to accept besides the
// demo key, and the open orders to rest in the book.
type simSetup struct {
	accounts []bybittest.Account
	orders   []bybittest.Order
}

// parseSimSetup reads --order CATEGORY:SYMBOL[:COUNT[:KIND]], --read-only-key
// KEY:SECRET and --rsa-key KEY:PUBLIC_KEY_PEM_FILE.
func parseSimSetup(orders, readOnly, rsaKeys []string) (simSetup, error) {
	s := simSetup{accounts: []bybittest.Account{{APIKey: bybittest.DemoAPIKey, Secret: bybittest.DemoAPISecret, UID: "demo"}}}
	for _, v := range readOnly {
		key, secret, ok := strings.Cut(v, ":")
		if !ok || key == "" || secret == "" {
			return s, fmt.Errorf("--read-only-key %q: want KEY:SECRET", key)
		}
		s.accounts = append(s.accounts, bybittest.Account{APIKey: key, Secret: secret, UID: "demo", ReadOnly: true})
	}
	for _, v := range rsaKeys {
		key, file, ok := strings.Cut(v, ":")
		if !ok || key == "" || file == "" {
			return s, fmt.Errorf("--rsa-key %q: want KEY:PUBLIC_KEY_PEM_FILE", v)
		}
		pub, err := readRSAPublicKey(file)
		if err != nil {
			return s, fmt.Errorf("--rsa-key %s: %w", key, err)
		}
		s.accounts = append(s.accounts, bybittest.Account{APIKey: key, RSAPublicKey: pub, UID: "demo"})
	}
	for _, v := range orders {
		parts := strings.Split(v, ":")
		if len(parts) < 2 || len(parts) > 4 || parts[1] == "" {
			return s, fmt.Errorf("--order %q: want CATEGORY:SYMBOL[:COUNT[:KIND]]", v)
		}
		cat, symbol, count, kind := parts[0], parts[1], 1, ""
		if !slices.Contains(messages.Categories, cat) {
			return s, fmt.Errorf("--order %q: category %q is not one of %s", v, cat, strings.Join(messages.Categories, ", "))
		}
		if len(parts) > 2 {
			n, err := strconv.Atoi(parts[2])
			if err != nil || n < 1 || n > 100000 {
				return s, fmt.Errorf("--order %q: count %q is not 1..100000", v, parts[2])
			}
			count = n
		}
		if len(parts) > 3 {
			kind = parts[3]
		}
		for range count {
			s.orders = append(s.orders, bybittest.Order{Category: cat, Symbol: symbol, Kind: kind, UID: "demo"})
		}
	}
	return s, nil
}

func readRSAPublicKey(file string) (*rsa.PublicKey, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("cannot read %s", file)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("%s holds no PEM block", file)
	}
	var pub any
	switch block.Type {
	case "PUBLIC KEY":
		pub, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%s: a %s block is not a public key", file, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	rsaPub, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an RSA public key", file)
	}
	return rsaPub, nil
}
