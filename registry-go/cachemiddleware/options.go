package cachemiddleware

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/descriptor-service/descriptor-service/client-go/descriptor"
	"github.com/descriptor-service/descriptor-service/client-go/descriptorcache"
	"github.com/distribution/distribution/v3/registry/storage/cache"
)

// The middleware's options (the registry configuration's
// middleware.repository[].options), all but target optional:
//
//	target: 127.0.0.1:5051     the service (host:port, dns:///name:port for round robin)
//	timeout: 2s                deadline of each call (default: the client's, 10s)
//	token: "..."               bearer token (or tokenfile: a file holding it)
//	tls:
//	  ca: /etc/ssl/ca.pem      verify the service against this CA (empty: system roots)
//	  certificate: client.crt  client certificate and key, for mutual TLS
//	  key: client.key
//	  servername: name         the name the service's certificate must carry
//	batchstat: true            send Stats that arrive while others are in flight as one
//	                           BatchStat (default true; see batch.go)
//
// An unknown key is refused, naming it, so that a typo is not silently ignored.
var knownOptions = map[string]bool{
	"target": true, "timeout": true, "token": true, "tokenfile": true, "tls": true, "batchstat": true,
}
var knownTLS = map[string]bool{"ca": true, "certificate": true, "key": true, "servername": true}

// newProvider builds the provider from the middleware's options, and says whether
// Stats are batched.
func newProvider(options map[string]any) (cache.BlobDescriptorCacheProvider, bool, error) {
	opts, target, err := clientOptions(options)
	if err != nil {
		return nil, false, err
	}
	batch := true
	if raw, ok := options["batchstat"]; ok && raw != nil {
		if batch, ok = raw.(bool); !ok {
			return nil, false, fmt.Errorf("options.batchstat: want true or false, got %T", raw)
		}
	}
	p, err := descriptorcache.NewProvider(target, opts...)
	return p, batch, err
}

func clientOptions(options map[string]any) ([]descriptor.Option, string, error) {
	for k := range options {
		if !knownOptions[k] {
			return nil, "", fmt.Errorf("options.%s: unknown option", k)
		}
	}
	target, err := stringOption(options, "target")
	if err != nil {
		return nil, "", err
	}
	if target == "" {
		return nil, "", errors.New("options.target: required (host:port of the descriptor service)")
	}
	var opts []descriptor.Option
	if raw, ok := options["timeout"]; ok {
		d, err := duration(raw)
		if err != nil {
			return nil, "", fmt.Errorf("options.timeout: %w", err)
		}
		opts = append(opts, descriptor.WithTimeout(d))
	}
	token, err := stringOption(options, "token")
	if err != nil {
		return nil, "", err
	}
	tokenFile, err := stringOption(options, "tokenfile")
	if err != nil {
		return nil, "", err
	}
	switch {
	case token != "" && tokenFile != "":
		return nil, "", errors.New("options.tokenfile: set token or tokenfile, not both")
	case tokenFile != "":
		data, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, "", fmt.Errorf("options.tokenfile: %w", err)
		}
		opts = append(opts, descriptor.WithToken(strings.TrimSpace(string(data))))
	case token != "":
		opts = append(opts, descriptor.WithToken(token))
	}
	if raw, ok := options["tls"]; ok && raw != nil {
		section, ok := asMap(raw)
		if !ok {
			return nil, "", errors.New("options.tls: want a map")
		}
		for k := range section {
			if !knownTLS[k] {
				return nil, "", fmt.Errorf("options.tls.%s: unknown option", k)
			}
		}
		var files [4]string
		for i, k := range []string{"ca", "certificate", "key", "servername"} {
			if files[i], err = stringOption(section, k); err != nil {
				return nil, "", fmt.Errorf("options.tls.%w", err)
			}
		}
		opts = append(opts, descriptor.WithTLSFiles(files[0], files[1], files[2]))
		if files[3] != "" {
			opts = append(opts, descriptor.WithServerName(files[3]))
		}
	}
	return opts, target, nil
}

func stringOption(options map[string]any, key string) (string, error) {
	raw, ok := options[key]
	if !ok || raw == nil {
		return "", nil
	}
	s, ok := raw.(string)
	if !ok {
		return "", fmt.Errorf("options.%s: want a string, got %T", key, raw)
	}
	return s, nil
}

func duration(raw any) (time.Duration, error) {
	switch v := raw.(type) {
	case string:
		return time.ParseDuration(v)
	case int:
		return time.Duration(v) * time.Second, nil
	default:
		return 0, fmt.Errorf("want a duration such as 2s, got %T", raw)
	}
}

// asMap accepts both shapes YAML decoders produce for a nested map.
func asMap(raw any) (map[string]any, bool) {
	switch m := raw.(type) {
	case map[string]any:
		return m, true
	case map[any]any:
		out := make(map[string]any, len(m))
		for k, v := range m {
			ks, ok := k.(string)
			if !ok {
				return nil, false
			}
			out[ks] = v
		}
		return out, true
	}
	return nil, false
}
