// Package descriptorcache is a distribution v3 blob descriptor cache provider
// whose cache is a descriptor service: a registry built on
// github.com/distribution/distribution/v3 keeps its blob descriptors in the
// service instead of in its own memory or Redis.
//
//	provider, err := descriptorcache.NewProvider("descriptor-cache:5051", descriptorcache.WithTimeout(time.Second))
//	if err != nil { ... }
//	defer provider.(io.Closer).Close()
//
// Errors are distribution's own values where distribution's caches return them
// (distribution.ErrBlobUnknown, distribution.ErrUnsupported,
// digest.ErrDigestInvalidFormat, digest.ErrDigestInvalidLength,
// digest.ErrDigestUnsupported, distribution.ErrRepositoryNameInvalid), so code
// that compares with == keeps working; every other failure is a
// *descriptor.Error.
package descriptorcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/storage/cache"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/descriptor-service/descriptor-service/client-go/descriptor"
)

// Option configures the provider's client: every descriptor.With... option.
type Option = descriptor.Option

// The client options, under this package's name for convenience.
var (
	WithTimeout          = descriptor.WithTimeout
	WithToken            = descriptor.WithToken
	WithTLSConfig        = descriptor.WithTLSConfig
	WithTLSFiles         = descriptor.WithTLSFiles
	WithServerName       = descriptor.WithServerName
	WithUnaryInterceptor = descriptor.WithUnaryInterceptor
	WithDialOptions      = descriptor.WithDialOptions
	WithoutRetry         = descriptor.WithoutRetry
	WithPropagator       = descriptor.WithPropagator
)

// NewProvider returns a cache provider backed by the descriptor service at
// target (see descriptor.New for the target forms and the default). The value
// also implements io.Closer, which closes its connection.
func NewProvider(target string, opts ...Option) (cache.BlobDescriptorCacheProvider, error) {
	c, err := descriptor.New(target, opts...)
	if err != nil {
		return nil, err
	}
	return &Provider{client: c}, nil
}

// Provider is the cache.BlobDescriptorCacheProvider NewProvider returns.
type Provider struct {
	client *descriptor.Client
}

var (
	_ cache.BlobDescriptorCacheProvider = (*Provider)(nil)
	_ io.Closer                         = (*Provider)(nil)
)

// Client is the provider's client (for Metrics, BatchStat, health).
func (p *Provider) Client() *descriptor.Client { return p.client }

// Close closes the provider's connection.
func (p *Provider) Close() error { return p.client.Close() }

// Stat returns the descriptor of dgst in the global scope.
func (p *Provider) Stat(ctx context.Context, dgst digest.Digest) (distribution.Descriptor, error) {
	desc, err := p.client.Stat(ctx, dgst)
	return desc, standard(err, "")
}

// SetDescriptor primes the global entry of dgst.
func (p *Provider) SetDescriptor(ctx context.Context, dgst digest.Digest, desc distribution.Descriptor) error {
	return standard(p.client.SetDescriptor(ctx, dgst, desc), "")
}

// Clear removes the global entry of dgst, in the service's cache and backend.
func (p *Provider) Clear(ctx context.Context, dgst digest.Digest) error {
	return standard(p.client.Clear(ctx, dgst), "")
}

// RepositoryScoped returns the cache of one repository. The name is checked as
// distribution's own caches check it (reference.ParseNormalizedNamed, with its
// errors), then against the service's grammar (an OCI distribution <name>
// without a domain, at most 255 characters): a name the service would refuse is
// refused here with distribution.ErrRepositoryNameInvalid.
// Revalidate asks the service to check dgst against its backend now, in the global
// scope (descriptor.Client.Revalidate): the descriptor when the backend holds it,
// distribution.ErrBlobUnknown when it does not (the service's entries are then gone).
// Not part of distribution's cache interface: the registry plug-in calls it where
// storage finds a blob missing that the service claimed, and after garbage collection.
func (p *Provider) Revalidate(ctx context.Context, dgst digest.Digest) (distribution.Descriptor, error) {
	desc, err := p.client.Revalidate(ctx, dgst)
	return desc, standard(err, "")
}

func (p *Provider) RepositoryScoped(repo string) (distribution.BlobDescriptorService, error) {
	if _, err := reference.ParseNormalizedNamed(repo); err != nil {
		if errors.Is(err, reference.ErrNameTooLong) {
			return nil, distribution.ErrRepositoryNameInvalid{Name: repo, Reason: reference.ErrNameTooLong}
		}
		return nil, err
	}
	if len(repo) > maxNameLength {
		return nil, distribution.ErrRepositoryNameInvalid{Name: repo, Reason: reference.ErrNameTooLong}
	}
	if !namePattern.MatchString(repo) {
		return nil, distribution.ErrRepositoryNameInvalid{Name: repo, Reason: errNameGrammar}
	}
	return &repository{repo: p.client.Repository(repo)}, nil
}

const maxNameLength = 255

var (
	namePattern    = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)*$`)
	errNameGrammar = fmt.Errorf("not path components of [a-z0-9] separated by '.', '_', '__' or '-' and joined by '/'")
)

type repository struct {
	repo *descriptor.Repository
}

func (r *repository) Stat(ctx context.Context, dgst digest.Digest) (distribution.Descriptor, error) {
	desc, err := r.repo.Stat(ctx, dgst)
	return desc, standard(err, r.repo.Name())
}

func (r *repository) SetDescriptor(ctx context.Context, dgst digest.Digest, desc distribution.Descriptor) error {
	return standard(r.repo.SetDescriptor(ctx, dgst, desc), r.repo.Name())
}

func (r *repository) Clear(ctx context.Context, dgst digest.Digest) error {
	return standard(r.repo.Clear(ctx, dgst), r.repo.Name())
}

// standard turns a client error into distribution's value where distribution's
// caches would return one.
// Revalidate is Provider.Revalidate in the repository's scope.
func (r *repository) Revalidate(ctx context.Context, dgst digest.Digest) (distribution.Descriptor, error) {
	desc, err := r.repo.Revalidate(ctx, dgst)
	return desc, standard(err, r.repo.Name())
}

func standard(err error, repo string) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, descriptor.ErrRepositoryNameInvalid) {
		return distribution.ErrRepositoryNameInvalid{Name: repo, Reason: err}
	}
	return descriptor.Standard(err)
}
