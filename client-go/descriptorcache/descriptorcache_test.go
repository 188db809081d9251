package descriptorcache_test

import (
	"io"
	"testing"

	"github.com/distribution/distribution/v3/registry/storage/cache"
	"github.com/distribution/distribution/v3/registry/storage/cache/cachecheck"
	"github.com/opencontainers/go-digest"

	"github.com/descriptor-service/descriptor-service/client-go/descriptorcache"
	"github.com/descriptor-service/descriptor-service/client-go/internal/testenv"
)

const (
	a384 = digest.Digest("sha384:abc" + "111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111")
	a256 = digest.Digest("sha256:abc" + "1111111111111111111111111111111111111111111111111111111111111")
	oct  = "application/octet-stream"
	repo = "foo/bar"
)

// setups are the server configurations every provider test runs against.
var setups = []struct {
	name   string
	config func(t *testing.T) testenv.Config
}{
	{"inmemory", func(t *testing.T) testenv.Config {
		return testenv.BaseConfig(t.TempDir(), true)
	}},
	{"redis", func(t *testing.T) testenv.Config {
		addr := testenv.StartRedis(t)
		cfg := testenv.BaseConfig(t.TempDir(), true)
		testenv.Section(cfg, "storage")["cache"] = map[string]any{"blobdescriptor": "redis"}
		cfg["redis"] = map[string]any{"addrs": []string{addr}}
		return cfg
	}},
}

func newProvider(t *testing.T, cfg testenv.Config) cache.BlobDescriptorCacheProvider {
	t.Helper()
	srv := testenv.StartServer(t, cfg)
	p, err := descriptorcache.NewProvider(srv.Target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.(io.Closer).Close() })
	return p
}

// TestCacheCheck runs distribution v3.1.1's own cache suite over the wire.
func TestCacheCheck(t *testing.T) {
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			cachecheck.CheckBlobDescriptorCache(t, newProvider(t, s.config(t)))
		})
	}
}
