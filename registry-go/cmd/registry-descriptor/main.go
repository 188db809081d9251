// Command registry-descriptor is distribution v3.1.1's registry, unmodified, with the
// descriptor service compiled in as its blob descriptor cache (the repository
// middleware "descriptorcache", package cachemiddleware). It takes distribution's
// own command line and configuration:
//
//	registry-descriptor serve config.yml
//
// The storage drivers, auth backends and proxy are the ones distribution's own
// cmd/registry links in.
//
// Before serving, it checks the descriptorcache middleware's options (distribution
// only reads them on the first repository request): a bad option stops the registry
// with "configuration error: ..." and exit status 1, as distribution's own
// configuration errors do.
package main

import (
	"fmt"
	"os"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry"
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/auth/silly"
	_ "github.com/distribution/distribution/v3/registry/auth/token"
	_ "github.com/distribution/distribution/v3/registry/proxy"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/azure"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/gcs"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/middleware/cloudfront"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/middleware/redirect"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/middleware/rewrite"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"

	"github.com/descriptor-service/descriptor-service/registry-go/cachemiddleware"
	"github.com/spf13/cobra"
)

func main() {
	registry.ServeCmd.PreRun = checkMiddleware
	if err := registry.RootCmd.Execute(); err != nil {
		os.Exit(1)
	}
}

// checkMiddleware reads the configuration as serve will (the argument, else
// REGISTRY_CONFIGURATION_PATH; REGISTRY_* overrides applied) and refuses bad
// descriptorcache options. A configuration it cannot read is left to serve, which
// reports it in its own words.
func checkMiddleware(cmd *cobra.Command, args []string) {
	path := os.Getenv("REGISTRY_CONFIGURATION_PATH")
	if len(args) > 0 {
		path = args[0]
	}
	if path == "" {
		return
	}
	fp, err := os.Open(path)
	if err != nil {
		return
	}
	defer fp.Close()
	config, err := configuration.Parse(fp)
	if err != nil {
		return
	}
	if err := cachemiddleware.CheckConfiguration(config); err != nil {
		fmt.Fprintf(os.Stderr, "configuration error: %v\n", err)
		os.Exit(1)
	}
}
