package cachemiddleware

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/descriptor-service/descriptor-service/client-go/descriptor"
	"github.com/descriptor-service/descriptor-service/client-go/descriptorcache"
	"github.com/distribution/distribution/v3/configuration"
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
//	maxbatch: 256              most digests in one BatchStat (default 256; lowered by
//	                           itself when the service's grpc.maxbatch is lower)
//
// An unknown key is refused, naming it (and the known key it resembles), so that a
// typo is not silently ignored. The registry-descriptor command checks the options at
// start (CheckConfiguration): a bad one stops the registry before it serves.
var knownOptions = map[string]bool{
	"target": true, "timeout": true, "token": true, "tokenfile": true, "tls": true, "batchstat": true,
	"maxbatch": true,
}
var knownTLS = map[string]bool{"ca": true, "certificate": true, "key": true, "servername": true}

// batchOptions says whether Stats are batched, and how many digests a BatchStat
// carries at most.
type batchOptions struct {
	enabled  bool
	maxBatch int
}

// newProvider builds the provider from the middleware's options, and says how Stats
// are batched.
func newProvider(options map[string]any) (cache.BlobDescriptorCacheProvider, batchOptions, error) {
	opts, target, err := clientOptions(options)
	if err != nil {
		return nil, batchOptions{}, err
	}
	batch, err := parseBatchOptions(options)
	if err != nil {
		return nil, batchOptions{}, err
	}
	p, err := descriptorcache.NewProvider(target, opts...)
	return p, batch, err
}

func parseBatchOptions(options map[string]any) (batchOptions, error) {
	batch := batchOptions{enabled: true, maxBatch: defaultMaxBatch}
	if raw, ok := options["batchstat"]; ok && raw != nil {
		if batch.enabled, ok = raw.(bool); !ok {
			return batch, fmt.Errorf("options.batchstat: want true or false, got %T", raw)
		}
	}
	if raw, ok := options["maxbatch"]; ok && raw != nil {
		n, ok := raw.(int)
		if !ok || n < 1 {
			return batch, fmt.Errorf("options.maxbatch: want a whole number >= 1 (the service's grpc.maxbatch), got %v", raw)
		}
		batch.maxBatch = n
	}
	return batch, nil
}

// CheckConfiguration checks the options of every enabled descriptorcache entry of a
// registry configuration, as the first request would, and returns the first
// problem, naming the entry and the option. The registry-descriptor command calls it
// before serving, so that a typo stops the registry at start instead of failing
// every repository request with 500. It makes no connection.
func CheckConfiguration(config *configuration.Configuration) error {
	for i, m := range config.Middleware["repository"] {
		if m.Name != Name || m.Disabled {
			continue
		}
		if _, err := entryFor(m.Options); err != nil {
			return fmt.Errorf("middleware.repository[%d] (%s): %w", i, Name, err)
		}
	}
	return nil
}

// unknownOption names an unknown key, with the known key it most likely misspells.
func unknownOption(prefix, key string, known map[string]bool) error {
	best, bestDist := "", 3 // at most two edits away, and closer than half the key
	for k := range known {
		if d := editDistance(key, k); d < bestDist && 2*d < len(k) {
			best, bestDist = k, d
		}
	}
	if best != "" {
		return fmt.Errorf("%s%s: unknown option (did you mean %s?)", prefix, key, best)
	}
	return fmt.Errorf("%s%s: unknown option", prefix, key)
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

func clientOptions(options map[string]any) ([]descriptor.Option, string, error) {
	for k := range options {
		if !knownOptions[k] {
			return nil, "", unknownOption("options.", k, knownOptions)
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
				return nil, "", unknownOption("options.tls.", k, knownTLS)
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
