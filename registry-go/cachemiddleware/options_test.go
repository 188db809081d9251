package cachemiddleware

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestClientOptions(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := []map[string]any{
		{"target": "127.0.0.1:5051"},
		{"target": "dns:///descriptor:5051", "timeout": "2s", "token": "t"},
		{"target": "127.0.0.1:5051", "tokenfile": tokenFile, "timeout": 3},
		{"target": "127.0.0.1:5051", "tls": map[any]any{"ca": "ca.pem", "servername": "descriptor.internal"}},
		{"target": "127.0.0.1:5051", "tls": map[string]any{"certificate": "c.pem", "key": "k.pem"}},
	}
	for _, opts := range good {
		if _, target, err := clientOptions(opts); err != nil || target != opts["target"] {
			t.Errorf("clientOptions(%v) = %q, %v", opts, target, err)
		}
	}
	bad := []struct {
		opts map[string]any
		want string
	}{
		{map[string]any{}, "options.target: required"},
		{map[string]any{"target": 5051}, "options.target: want a string"},
		{map[string]any{"target": "a:1", "colour": "blue"}, "options.colour: unknown option"},
		{map[string]any{"target": "a:1", "tls": map[string]any{"xyz": "c.pem"}}, "options.tls.xyz: unknown option"},
		{map[string]any{"target": "a:1", "timeout": "soon"}, "options.timeout"},
		{map[string]any{"target": "a:1", "token": "t", "tokenfile": tokenFile}, "not both"},
		{map[string]any{"target": "a:1", "tokenfile": filepath.Join(dir, "missing")}, "options.tokenfile"},
		{map[string]any{"target": "a:1", "tls": "yes"}, "options.tls: want a map"},
		{map[string]any{"target": "a:1", "tls": map[string]any{"cert": "c.pem"}}, "options.tls.cert: unknown option"},
		{map[string]any{"target": "a:1", "timout": "2s"}, "options.timout: unknown option (did you mean timeout?)"},
	}
	for _, c := range bad {
		_, _, err := clientOptions(c.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("clientOptions(%v) = %v, want an error containing %q", c.opts, err, c.want)
		}
	}
}

func TestProviderForSharesOneProviderPerOptions(t *testing.T) {
	a, err := ProviderFor(map[string]any{"target": "127.0.0.1:1", "timeout": "1s"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := ProviderFor(map[string]any{"timeout": "1s", "target": "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := ProviderFor(map[string]any{"target": "127.0.0.1:2"})
	if err != nil {
		t.Fatal(err)
	}
	if a != b || a == c {
		t.Errorf("providers: same options must share one, different ones must not (%p %p %p)", a, b, c)
	}
	if _, err := ProviderFor(map[string]any{"target": ""}); err == nil {
		t.Error("an empty target must be refused")
	}
	if _, err := ProviderFor(map[string]any{"target": "a:1", "batchstat": "yes"}); err == nil ||
		!strings.Contains(err.Error(), "options.batchstat") {
		t.Errorf("batchstat: yes = %v, want an error naming options.batchstat", err)
	}
	on, _ := entryFor(map[string]any{"target": "a:1"})
	off, _ := entryFor(map[string]any{"target": "a:1", "batchstat": false})
	if on.batchers == nil || off.batchers != nil {
		t.Error("batchstat is on by default and off with batchstat: false")
	}
}

func TestMaxBatchOption(t *testing.T) {
	for _, c := range []struct {
		opts map[string]any
		want int
	}{
		{map[string]any{"target": "a:1"}, defaultMaxBatch},
		{map[string]any{"target": "a:1", "maxbatch": 5}, 5},
	} {
		e, err := entryFor(c.opts)
		if err != nil || e.batchers.limit.get() != c.want {
			t.Errorf("entryFor(%v): limit %d, %v; want %d", c.opts, e.batchers.limit.get(), err, c.want)
		}
	}
	for _, bad := range []any{0, -1, "many", 2.5} {
		_, err := ProviderFor(map[string]any{"target": "a:1", "maxbatch": bad})
		if err == nil || !strings.Contains(err.Error(), "options.maxbatch") {
			t.Errorf("maxbatch: %v = %v, want an error naming options.maxbatch", bad, err)
		}
	}
}

func TestSuggestionsOnlyWhenClose(t *testing.T) {
	for key, want := range map[string]string{
		"timout":    "did you mean timeout?",
		"targt":     "did you mean target?",
		"batchsize": "",
		"tls2":      "did you mean tls?",
		"x":         "",
	} {
		err := unknownOption("options.", key, knownOptions)
		if got := err.Error(); (want == "") == strings.Contains(got, "did you mean") || !strings.Contains(got, want) {
			t.Errorf("%s: %q, want %q", key, got, want)
		}
	}
}
