package descriptor_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"
	"go.opentelemetry.io/otel/propagation"

	"github.com/descriptor-service/descriptor-service/client-go/descriptor"
)

func ExampleNew() {
	c, err := descriptor.New("dns:///registry-cache:5051",
		descriptor.WithTimeout(2*time.Second),
		descriptor.WithTLSFiles("/etc/descriptor/ca.crt", "", ""))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	dgst := digest.Digest("sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	desc, err := c.Repository("library/ubuntu").Stat(context.Background(), dgst)
	var e *descriptor.Error
	switch {
	case err == nil:
		fmt.Println(desc.MediaType, desc.Size)
	case errors.Is(err, distribution.ErrBlobUnknown):
		fmt.Println("not in the cache and not in storage")
	case errors.As(err, &e) && e.Temporary():
		fmt.Println("try again later:", e.Reason)
	default:
		log.Fatal(err)
	}
}

func ExampleClient_BatchStat() {
	c, err := descriptor.New("") // $DESCRIPTOR_TARGET, else 127.0.0.1:5051
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	results, err := c.Repository("library/ubuntu").BatchStat(context.Background(), []digest.Digest{
		"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		"md5:abc",
	})
	if err != nil { // the call as a whole: BATCH_TOO_LARGE, UNAVAILABLE, ...
		log.Fatal(err)
	}
	for _, r := range results {
		if r.Err != nil {
			fmt.Println(r.Digest, r.Err) // this digest only: BLOB_UNKNOWN, DIGEST_UNSUPPORTED, ...
			continue
		}
		fmt.Println(r.Digest, r.Descriptor.Size)
	}
}

func ExampleWithPropagator() {
	// W3C Trace Context and Baggage whatever the global propagator is; a call
	// whose context carries a span sends traceparent (tracestate, baggage).
	c, err := descriptor.New("", descriptor.WithPropagator(
		propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// No trace context on any call.
	quiet, err := descriptor.New("", descriptor.WithPropagator(propagation.NewCompositeTextMapPropagator()))
	if err != nil {
		log.Fatal(err)
	}
	defer quiet.Close()
}
