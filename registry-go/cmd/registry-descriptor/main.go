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
// One command differs: garbage-collect runs distribution's own mark and sweep and
// then revalidates in the descriptor service exactly what it removed:
//
//	registry-descriptor garbage-collect [--dry-run] [--delete-untagged] config.yml
//
// Before serving, it checks the descriptorcache middleware's options (distribution
// only reads them on the first repository request): a bad option stops the registry
// with "configuration error: ..." and exit status 1, as distribution's own
// configuration errors do.
package main

import (
	"context"
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
	"github.com/spf13/cobra"

	"github.com/descriptor-service/descriptor-service/registry-go/cachemiddleware"
)

func gcCommand() *cobra.Command {
	var opts cachemiddleware.GCOptions
	cmd := &cobra.Command{
		Use:   "garbage-collect <config>",
		Short: "`garbage-collect` deletes layers not referenced by any manifests, and revalidates them in the descriptor service",
		Long: "`garbage-collect` runs distribution's mark and sweep (as `registry garbage-collect` does) on the\n" +
			"configuration's storage, then asks the descriptor service configured in the descriptorcache\n" +
			"middleware to revalidate every blob and link it removed, so the service stops answering them.\n" +
			"Stop the registry (or make it read-only) first. Exit status 1 when the collection failed or the\n" +
			"service could not be told (the output lists the descriptorctl commands that finish the job).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fp, err := os.Open(args[0])
			if err != nil {
				return fmt.Errorf("configuration error: %w", err)
			}
			config, err := configuration.Parse(fp)
			fp.Close()
			if err != nil {
				return fmt.Errorf("configuration error: %s: %w", args[0], err)
			}
			_, err = cachemiddleware.GarbageCollect(context.Background(), config, opts, cmd.OutOrStdout())
			return err
		},
		SilenceUsage: true,
	}
	cmd.Flags().BoolVarP(&opts.DryRun, "dry-run", "d", false, "do everything except remove the blobs (nothing is revalidated)")
	cmd.Flags().BoolVarP(&opts.RemoveUntagged, "delete-untagged", "m", false, "delete manifests that are not currently referenced via tag")
	cmd.Flags().BoolVarP(&opts.Quiet, "quiet", "q", false, "silence the mark and sweep's output (the service's summary is still printed)")
	cmd.Flags().IntVar(&opts.Concurrency, "concurrency", 16, "revalidations in flight at once")
	return cmd
}

func main() {
	registry.ServeCmd.PreRun = checkMiddleware
	// distribution's own garbage-collect, replaced by one that tells the service.
	registry.RootCmd.RemoveCommand(registry.GCCmd)
	registry.RootCmd.AddCommand(gcCommand())
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
