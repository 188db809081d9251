package descriptor_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/descriptor-service/descriptor-service/client-go/descriptor"
	"github.com/descriptor-service/descriptor-service/client-go/descriptortest"
)

// TestRegistryTokens calls a server with distribution's token auth (auth.token)
// with registry tokens of an ES256 and of an RS256 issuer: a grant opens
// exactly its scope, a missing one is PERMISSION_DENIED naming the scope the
// call needs, and a token that is missing, expired or not a token at all is
// UNAUTHENTICATED.
func TestRegistryTokens(t *testing.T) {
	ctx := context.Background()
	t.Setenv("DESCRIPTOR_TOKEN", "")
	const (
		r = "team/app"
		s = "team/other"
	)
	issuers := []struct {
		name string
		new  func(testing.TB) *descriptortest.TokenIssuer
	}{
		{"ES256", descriptortest.NewTokenIssuer},
		{"RS256", descriptortest.NewRSATokenIssuer},
	}
	for _, iss := range issuers {
		t.Run(iss.name, func(t *testing.T) {
			issuer := iss.new(t)
			srv, layout := server(t, func(cfg descriptortest.Config) {
				cfg["auth"] = map[string]any{"token": issuer.AuthConfig()}
			})
			content := []byte("a layer of " + r)
			blob := digest.Digest(layout.Push(t, r, content))
			var (
				pull    = issuer.Mint("puller", 5*time.Minute, "repository:"+r+":pull")
				push    = issuer.Mint("pusher", 5*time.Minute, "repository:"+r+":pull,push")
				expired = issuer.Mint("puller", -2*time.Minute, "repository:"+r+":pull")
				// Same issuer and service names, keys the server does not trust.
				forged = iss.new(t).Mint("puller", 5*time.Minute, "repository:"+r+":pull")
			)
			stat := func(repo string) func(*descriptor.Client) error {
				return func(c *descriptor.Client) error {
					got, err := c.Repository(repo).Stat(ctx, blob)
					if err == nil && (got.Digest != blob || got.Size != int64(len(content))) {
						t.Fatalf("Stat in %s = %#v", repo, got)
					}
					return err
				}
			}
			set := func(c *descriptor.Client) error {
				return c.Repository(r).SetDescriptor(ctx, blob, desc(oct, blob, int64(len(content))))
			}
			cases := []struct {
				name  string
				token string
				call  func(*descriptor.Client) error
				is    error  // nil: the call succeeds
				scope string // the scope a refusal names
				why   string // in the refusal's message
			}{
				{"pull token, Stat in its repository", pull, stat(r), nil, "", ""},
				{"pull token, BatchStat in its repository", pull, func(c *descriptor.Client) error {
					res, err := c.Repository(r).BatchStat(ctx, []digest.Digest{blob})
					if err == nil && res[0].Err != nil {
						return res[0].Err
					}
					return err
				}, nil, "", ""},
				{"pull token, Stat in another repository", pull, stat(s),
					descriptor.ErrPermissionDenied, "repository:" + s + ":pull", "does not grant"},
				{"pull token, Stat in the global scope", pull, func(c *descriptor.Client) error { _, err := c.Stat(ctx, blob); return err },
					descriptor.ErrPermissionDenied, "registry:descriptors:pull", "does not grant"},
				{"pull token, SetDescriptor", pull, set,
					descriptor.ErrPermissionDenied, "repository:" + r + ":push", "does not grant"},
				{"push token, SetDescriptor", push, set, nil, "", ""},
				{"expired token", expired, stat(r), descriptor.ErrUnauthenticated, "repository:" + r + ":pull", "expired"},
				{"token of untrusted keys", forged, stat(r), descriptor.ErrUnauthenticated, "repository:" + r + ":pull", "invalid bearer token"},
				{"garbage token", "not.a.token", stat(r), descriptor.ErrUnauthenticated, "repository:" + r + ":pull", "invalid bearer token"},
				{"no token", "", stat(r), descriptor.ErrUnauthenticated, "repository:" + r + ":pull", "missing bearer token"},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					err := tc.call(dial(t, srv.Target, descriptor.WithToken(tc.token)))
					if tc.is == nil {
						if err != nil {
							t.Fatalf("got %v, want success", err)
						}
						return
					}
					if !errors.Is(err, tc.is) {
						t.Fatalf("got %v, want %v", err, tc.is)
					}
					var e *descriptor.Error
					if !errors.As(err, &e) {
						t.Fatalf("%v (%T) is not a *descriptor.Error", err, err)
					}
					if !strings.Contains(err.Error(), tc.scope) || e.Metadata["scope"] != tc.scope {
						t.Fatalf("refusal %q (metadata %v) does not name %s", err, e.Metadata, tc.scope)
					}
					if !strings.Contains(e.Message, tc.why) {
						t.Fatalf("refusal %q does not say %q", err, tc.why)
					}
				})
			}
		})
	}
}
