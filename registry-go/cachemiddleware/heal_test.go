package cachemiddleware

import (
	"strings"
	"testing"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

const someDigest = digest.Digest("sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")

// mountSource reads the mount request out of the options distribution's handler
// passes (storage.WithMountFrom), and nothing else.
func TestMountSource(t *testing.T) {
	named, err := reference.WithName("team/source")
	if err != nil {
		t.Fatal(err)
	}
	canonical, err := reference.WithDigest(named, someDigest)
	if err != nil {
		t.Fatal(err)
	}
	from, ok := mountSource([]distribution.BlobCreateOption{storage.WithMountFrom(canonical)})
	if !ok || from.Name() != "team/source" || from.Digest() != someDigest {
		t.Fatalf("mountSource = %v, %v", from, ok)
	}
	if _, ok := mountSource(nil); ok {
		t.Fatal("no options: no mount")
	}
}

// ServiceOptions finds the middleware's options in a registry configuration and
// refuses one that does not enable it, naming the fix.
func TestServiceOptions(t *testing.T) {
	parse := func(yaml string) *configuration.Configuration {
		t.Helper()
		config, err := configuration.Parse(strings.NewReader(yaml))
		if err != nil {
			t.Fatal(err)
		}
		return config
	}
	base := "version: 0.1\nstorage: {filesystem: {rootdirectory: /tmp/x}}\n"
	config := parse(base + "middleware:\n  repository:\n    - name: descriptorcache\n      options: {target: 127.0.0.1:5051}\n")
	options, err := ServiceOptions(config)
	if err != nil || options["target"] != "127.0.0.1:5051" {
		t.Fatalf("ServiceOptions = %v, %v", options, err)
	}
	for _, yaml := range []string{
		base,
		base + "middleware:\n  repository:\n    - name: descriptorcache\n      disabled: true\n      options: {target: x:1}\n",
	} {
		if _, err := ServiceOptions(parse(yaml)); err == nil || !strings.Contains(err.Error(), "enables no descriptorcache") {
			t.Fatalf("ServiceOptions(%q) = %v", yaml, err)
		}
	}
}
