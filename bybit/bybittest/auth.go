package bybittest

import (
	"crypto"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"hash/fnv"
	"net/http"
	"strconv"
	"time"
)

// authenticate checks the key, the timestamp rule and the signature the way
// Bybit documents them, with code of its own.
func (e *Exchange) authenticate(r *http.Request, payload []byte) (Account, int, string) {
	key := r.Header.Get("X-BAPI-API-KEY")
	e.mu.Lock()
	acct, ok := e.accounts[key]
	now := e.nowLocked()
	e.mu.Unlock()
	if key == "" || !ok {
		return Account{}, 10003, "API key is invalid."
	}
	tsHeader := r.Header.Get("X-BAPI-TIMESTAMP")
	ts, err := strconv.ParseInt(tsHeader, 10, 64)
	if err != nil {
		return acct, 10001, "invalid timestamp header"
	}
	recvHeader := r.Header.Get("X-BAPI-RECV-WINDOW")
	recv := int64(5000)
	if recvHeader != "" {
		if recv, err = strconv.ParseInt(recvHeader, 10, 64); err != nil {
			return acct, 10001, "invalid recv_window header"
		}
	}
	server := now.UnixMilli()
	if !(server-recv <= ts && ts < server+1000) {
		return acct, 10002, fmt.Sprintf("invalid request, please check your server timestamp or recv_window param. req_timestamp[%d],server_timestamp[%d],recv_window[%d]", ts, server, recv)
	}
	origin := tsHeader + key + recvHeader + string(payload)
	if !verify(acct, origin, r.Header.Get("X-BAPI-SIGN")) {
		return acct, 10004, "error sign! origin_string[" + origin + "]"
	}
	return acct, 0, ""
}

// verify checks a signature: hex HMAC-SHA256 with the secret, or base64 RSA
// PKCS#1 v1.5 over SHA-256 with the registered public key.
func verify(acct Account, origin, sig string) bool {
	if acct.RSAPublicKey != nil {
		raw, err := base64.StdEncoding.DecodeString(sig)
		if err != nil {
			return false
		}
		sum := sha256.Sum256([]byte(origin))
		return rsa.VerifyPKCS1v15(acct.RSAPublicKey, crypto.SHA256, sum[:], raw) == nil
	}
	mac := hmac.New(sha256.New, []byte(acct.Secret))
	mac.Write([]byte(origin))
	return hmac.Equal([]byte(hex.EncodeToString(mac.Sum(nil))), []byte(sig))
}

func (e *Exchange) serveQueryAPI(w http.ResponseWriter, r *http.Request) {
	if e.opts.Demo {
		e.writeEnvelope(w, r, Request{}, 10032, demoUnsupported, nil, nil)
		return
	}
	acct, code, msg := e.authenticate(r, []byte(r.URL.RawQuery))
	if code != 0 {
		e.writeEnvelope(w, r, Request{}, code, msg, nil, nil)
		return
	}
	perms := acct.Permissions
	if perms == nil {
		perms = map[string][]string{
			"ContractTrade": {"Order", "Position"}, "Spot": {"SpotTrade"}, "Options": {"OptionsTrade"},
			"Wallet": {}, "Derivatives": {"DerivativesTrade"},
		}
	}
	readOnly := 0
	if acct.ReadOnly {
		readOnly = 1
	}
	e.mu.Lock()
	now := e.nowLocked()
	e.mu.Unlock()
	expiredAt, deadlineDay := time.Unix(0, 0).UTC(), -2
	if !acct.ExpiresAt.IsZero() {
		expiredAt, deadlineDay = acct.ExpiresAt.UTC(), int(acct.ExpiresAt.Sub(now).Hours()/24)
	}
	rsaPublicKey := ""
	if acct.RSAPublicKey != nil {
		if der, err := x509.MarshalPKIXPublicKey(acct.RSAPublicKey); err == nil {
			rsaPublicKey = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
		}
	}
	uid := userID(acct.UID)
	uta := 1
	if acct.Classic {
		uta = 0
	}
	// The fields of Bybit's answer (docs/v5/user/apikey-info.mdx).
	e.writeEnvelope(w, r, Request{}, 0, "", map[string]any{
		"id": strconv.FormatInt(uid, 10), "note": "bybittest", "apiKey": acct.APIKey, "readOnly": readOnly, "secret": "",
		"permissions": perms, "ips": []string{"*"}, "type": 1, "deadlineDay": deadlineDay,
		"expiredAt": expiredAt.Format(time.RFC3339), "createdAt": now.Add(-24 * time.Hour).UTC().Format(time.RFC3339),
		"unified": 0, "uta": uta, "userID": uid, "inviterID": 0, "vipLevel": "No VIP", "mktMakerLevel": "0",
		"affiliateID": 0, "rsaPublicKey": rsaPublicKey, "isMaster": true, "parentUid": "0",
		"kycLevel": "LEVEL_DEFAULT", "kycRegion": "", "userIDInt64": strconv.FormatInt(uid, 10),
		"inviterIDInt64": "0", "affiliateIDInt64": "0",
	}, nil)
}

// userID is the numeric user id the simulator reports for a UID.
func userID(uid string) int64 {
	h := fnv.New32a()
	h.Write([]byte(uid))
	return int64(h.Sum32()%90_000_000) + 10_000_000
}

const permissionDenied = "Permission denied, please check your API key permissions."

// signedBody reads a POST's JSON body into v and checks the request's
// signature; entry is the log entry of a refusal, made from v. It answers a
// refused request itself (ok false).
func (e *Exchange) signedBody(w http.ResponseWriter, r *http.Request, v any, entry func() Request) (acct Account, ok bool) {
	body, err := readBody(r)
	if err != nil {
		e.writeEnvelope(w, r, Request{}, 10001, "unreadable body", nil, nil)
		return Account{}, false
	}
	if err := json.Unmarshal(body, v); err != nil {
		e.writeEnvelope(w, r, Request{}, 10001, "params error: body is not JSON", nil, nil)
		return Account{}, false
	}
	acct, code, msg := e.authenticate(r, body)
	if code != 0 {
		e.writeEnvelope(w, r, entry(), code, msg, nil, nil)
		return Account{}, false
	}
	return acct, true
}
