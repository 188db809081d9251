package descriptorcache_test

import (
	"context"
	"io"
	"log"
	"time"

	"github.com/descriptor-service/descriptor-service/client-go/descriptorcache"
)

func ExampleNewProvider() {
	provider, err := descriptorcache.NewProvider("registry-cache:5051", descriptorcache.WithTimeout(time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer provider.(io.Closer).Close()

	scoped, err := provider.RepositoryScoped("library/ubuntu")
	if err != nil {
		log.Fatal(err) // distribution.ErrRepositoryNameInvalid, or reference's error
	}
	// distribution.ErrBlobUnknown itself when the service does not know the blob.
	_, err = scoped.Stat(context.Background(), "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	_ = err
}
